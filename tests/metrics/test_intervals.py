"""pipeline/metrics/intervals.py against known answers and an independent loop-over-replicates bootstrap."""

from types import SimpleNamespace as NS

import numpy as np
import pytest
from scipy.stats import norm
from scipy.stats import t as student_t

from pipeline.metrics.intervals import (
    METRICS,
    SELECTION_WEIGHT,
    IntervalAccumulator,
    combine,
    count_columns,
    count_matrix,
    pxap_rows,
    resample_indices,
    verdict,
)
from pipeline.metrics.masks import MaskEvaluator

IOUS = (30, 50, 70)


def box(rng, n, n_thr=20, p=0.5, shift=None):
    """Random per-image outcomes; `shift` (n,) bool forces those images correct everywhere."""
    multi = rng.random((n, 3, n_thr)) < p
    single = multi & (rng.random((n, 3, n_thr)) < 0.8)
    gt_known = rng.random(n) < p
    top1 = gt_known & (rng.random(n) < 0.7)
    if shift is not None:
        multi[shift] = single[shift] = True
        gt_known[shift] = top1[shift] = True
    return NS(per_image_multi=multi, per_image_single=single, per_image_gt_known=gt_known, per_image_top1_loc=top1)


def mask(rng, n, bins=12):
    return NS(per_image_fg_hist=rng.integers(0, 5, (n, bins)), per_image_bg_hist=rng.integers(0, 5, (n, bins)))


def fidelity(rng, n):
    return NS(avg_drop_terms=rng.random(n), inc_conf_flags=rng.random(n) < 0.3)


def feed(acc, seed, variant, soft, sig, *, protocol="clean"):
    on_result = acc.callback(seed)
    for branch, parts in (("softmax", soft), ("sigmoid", sig)):
        for split, (b, m, f) in parts.items():
            on_result((protocol, variant, branch, split), b, m, f)


def dataset(rng, n_test=60, n_val=25):
    return {"test": (box(rng, n_test), mask(rng, n_test), fidelity(rng, n_test)), "val": (box(rng, n_val), None, None)}


def rows_by_metric(acc):
    return {r["metric"]: r for r in acc.table()}


def test_identical_branches_give_zero_delta_and_an_interval_containing_zero():
    rng = np.random.default_rng(0)
    acc = IntervalAccumulator(resamples=200, seed=3)
    for seed in (0, 1, 2):
        data = dataset(rng)
        feed(acc, seed, "cam", data, data)
    rows = rows_by_metric(acc)
    assert list(rows) == list(METRICS)
    for r in rows.values():
        assert r["delta"] == 0.0 and r["low"] == 0.0 and r["high"] == 0.0 and r["half_width"] == 0.0
        assert r["verdict"] == "no detectable difference" and r["models"] == [[0, 0], [0, 1], [0, 2]]


def test_a_planted_shift_is_found_with_the_right_sign():
    rng = np.random.default_rng(1)
    acc = IntervalAccumulator(resamples=300, seed=0)
    n_test, n_val = 400, 150
    soft_test, soft_val = box(rng, n_test, p=0.4), box(rng, n_val, p=0.4)  # one baseline: the same softmax branch
    for seed in (0, 1, 2):
        # each model's sigmoid branch: the same outcomes plus 10% more images correct (another 10% per model,
        # on val and on test)
        extra_t, extra_v = rng.random(n_test) < 0.1, rng.random(n_val) < 0.1
        sig_test, sig_val = (NS(**{k: v.copy() for k, v in vars(b).items()}) for b in (soft_test, soft_val))
        for b, extra in ((sig_test, extra_t), (sig_val, extra_v)):
            b.per_image_multi[extra] = b.per_image_single[extra] = True
            b.per_image_gt_known[extra] = b.per_image_top1_loc[extra] = True
        terms = rng.random(n_test)
        soft_f = NS(avg_drop_terms=terms, inc_conf_flags=np.zeros(n_test, bool))
        sig_f = NS(avg_drop_terms=terms * 0.5, inc_conf_flags=extra_t)  # sigmoid: lower drop, more increases
        feed(
            acc,
            seed,
            "cam",
            {"test": (soft_test, None, soft_f), "val": (soft_val, None, None)},
            {"test": (sig_test, None, sig_f), "val": (sig_val, None, None)},
        )
    rows = rows_by_metric(acc)
    assert "pxap" not in rows
    for metric in ("maxboxacc_v2", "maxboxacc_iou50", "gt_known_loc", "top1_loc", "inc_conf"):
        assert rows[metric]["low"] > 0 and rows[metric]["verdict"] == "sigmoid better", rows[metric]
    assert 4 < rows["gt_known_loc"]["delta"] < 8  # 10% more correct, of the 60% the softmax branch missed
    assert rows["avg_drop"]["high"] < 0 and rows["avg_drop"]["verdict"] == "sigmoid better"


def test_verdict_rules():
    assert verdict(0.1, 2.0, "maxboxacc_v2") == "sigmoid better"
    assert verdict(-2.0, -0.1, "maxboxacc_v2") == "sigmoid worse"
    assert verdict(-2.0, 0.0, "maxboxacc_v2") == "no detectable difference"
    assert verdict(0.1, 2.0, "avg_drop") == "sigmoid worse"
    assert verdict(-2.0, -0.1, "avg_drop") == "sigmoid better"


def test_count_matrix_matches_choice_and_pxap_matches_the_mask_evaluator():
    idx = resample_indices(5, 0, 7, 4)
    rng = np.random.default_rng([5, 0])
    assert np.array_equal(idx, np.stack([rng.choice(7, size=7) for _ in range(4)]))
    w = count_matrix(idx)
    assert w.shape == (5, 7) and (w.sum(axis=1) == 7).all() and (w[-1] == 1).all()
    assert np.array_equal(w[2], np.bincount(idx[2], minlength=7))
    ev = MaskEvaluator(grid="wsol")
    rng = np.random.default_rng(2)
    scores = rng.random((3, 8, 8))
    fg = rng.random((3, 8, 8)) < 0.3
    ev.accumulate(scores, fg, np.zeros_like(fg))
    res = ev.compute()
    assert pxap_rows(res.fg_hist[None].astype(float), res.bg_hist[None].astype(float))[0] == pytest.approx(
        res.pxap, abs=1e-9
    )


def brute_force(data_by_seed, resamples, seed):
    """An independent image bootstrap: a loop over replicates, indexing the images drawn by np.random choice;
    per replicate the mean over models of each model's delta (the models fixed)."""
    rng_t, rng_v = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    seeds = sorted(data_by_seed)
    n_test = len(data_by_seed[seeds[0]]["softmax"]["test"][0].per_image_gt_known)
    n_val = len(data_by_seed[seeds[0]]["softmax"]["val"][0].per_image_gt_known)
    out = {m: np.zeros(resamples) for m in ("maxboxacc_v2", "maxboxacc", "gt_known_loc", "pxap", "avg_drop")}
    for r in range(resamples):
        it, iv = rng_t.choice(n_test, size=n_test), rng_v.choice(n_val, size=n_val)
        per_seed = {m: [] for m in out}
        for s in seeds:
            value = {}
            for branch in ("softmax", "sigmoid"):
                (bt, mt, ft), (bv, _, _) = data_by_seed[s][branch]["test"], data_by_seed[s][branch]["val"]
                accs = []
                for k in range(3):
                    j = int(np.argmax(bv.per_image_multi[iv, k].sum(axis=0)))
                    accs.append(100 * bt.per_image_multi[it, k, j].mean())
                j = int(np.argmax(bv.per_image_single[iv, 1].sum(axis=0)))
                value[branch] = {
                    "maxboxacc_v2": np.mean(accs),
                    "maxboxacc": 100 * bt.per_image_single[it, 1, j].mean(),
                    "gt_known_loc": 100 * bt.per_image_gt_known[it].mean(),
                    "avg_drop": ft.avg_drop_terms[it].mean(),
                }
                value[branch]["pxap"] = pxap_reference(
                    mt.per_image_fg_hist[it].sum(axis=0), mt.per_image_bg_hist[it].sum(axis=0)
                )
            for m in out:
                per_seed[m].append(value["sigmoid"][m] - value["softmax"][m])
        for m in out:
            out[m][r] = np.mean(per_seed[m])
    return out


def pxap_reference(fg, bg):
    """PxAP from METHOD.md 4.5 written out as a loop over cut points."""
    positives = fg.sum()
    total, prev_recall, tp, fp = 0.0, 0.0, 0, 0
    for j, (f, b) in enumerate(zip(fg[::-1], bg[::-1])):
        tp, fp = tp + f, fp + b
        recall = tp / positives
        if j > 0 and tp + fp > 0:
            total += tp / (tp + fp) * (recall - prev_recall)
        prev_recall = recall
    return 100 * total


def test_matches_an_independent_brute_force_bootstrap():
    rng = np.random.default_rng(7)
    data = {s: {b: dataset(rng, n_test=40, n_val=15) for b in ("softmax", "sigmoid")} for s in (0, 4, 9)}
    acc = IntervalAccumulator(resamples=60, seed=11, thresholds="resampled")  # the loop re-chooses on val
    for s in (9, 0, 4):  # any order of seeds
        feed(acc, s, "gradcam", data[s]["softmax"], data[s]["sigmoid"])
    rows = rows_by_metric(acc)
    percentile = rows_by_metric(_refeed(data, method="percentile"))
    reference = brute_force(data, 60, 11)
    for metric, values in reference.items():
        deltas = rows[metric]["model_deltas"]  # 3 models of baseline 0: the fine-tuning level, t with 2 df
        v_model = np.var(deltas, ddof=1) / 3
        variance = np.var(values, ddof=1) + v_model
        df = variance**2 * 2 / v_model**2
        q = student_t.ppf(0.975, df)
        est = np.mean(deltas)
        assert rows[metric]["delta"] == pytest.approx(est, abs=1e-5), metric
        assert rows[metric]["low"] == pytest.approx(est - q * variance**0.5, abs=1e-5), metric
        assert rows[metric]["high"] == pytest.approx(est + q * variance**0.5, abs=1e-5), metric
        lo_q, hi_q = np.percentile(values, [2.5, 97.5])
        m = q * v_model**0.5
        assert percentile[metric]["low"] == pytest.approx(est - np.hypot(max(est - lo_q, 0), m), abs=1e-5), metric
        assert percentile[metric]["high"] == pytest.approx(est + np.hypot(max(hi_q - est, 0), m), abs=1e-5), metric


def _refeed(data, method):
    acc = IntervalAccumulator(resamples=60, seed=11, method=method, thresholds="resampled")
    for s in (9, 0, 4):
        feed(acc, s, "gradcam", data[s]["softmax"], data[s]["sigmoid"])
    return acc


def test_same_seed_same_numbers_other_seed_other_draws_and_test_mode():
    rng = np.random.default_rng(3)
    data = {b: dataset(rng) for b in ("softmax", "sigmoid")}
    tables = []
    for seed in (1, 1, 2):
        acc = IntervalAccumulator(resamples=100, seed=seed)
        feed(acc, 0, "cam", data["softmax"], data["sigmoid"])
        tables.append(acc.table())
    assert tables[0] == tables[1] and tables[0] != tables[2]
    assert [r["delta"] for r in tables[0]] == [r["delta"] for r in tables[2]]  # the point estimate has no draw
    oracle = IntervalAccumulator(resamples=50, seed=0, threshold_split="test")
    feed(oracle, 0, "cam", data["softmax"], data["sigmoid"])  # val results are ignored
    row = rows_by_metric(oracle)["maxboxacc_iou50"]
    best = [100 * data[b]["test"][0].per_image_multi[:, 1].mean(axis=0).max() for b in ("softmax", "sigmoid")]
    assert row["delta"] == pytest.approx(best[1] - best[0], abs=1e-6)


def test_missing_and_duplicate_results_are_errors():
    rng = np.random.default_rng(4)
    data = dataset(rng)
    acc = IntervalAccumulator(resamples=10)
    acc.add(0, ("clean", "cam", "softmax", "test"), *data["test"])
    with pytest.raises(ValueError, match="came twice"):
        acc.add(0, ("clean", "cam", "softmax", "test"), *data["test"])
    with pytest.raises(ValueError, match=r"results missing for: clean/cam/softmax model \(0, 0\): val"):
        acc.table()
    with pytest.raises(ValueError, match="same images"):
        acc.add(0, ("clean", "cam", "sigmoid", "test"), *dataset(rng, n_test=10)["test"])
    with pytest.raises(ValueError, match="branch 'head'"):
        acc.add(0, ("clean", "cam", "head", "test"), *data["test"])


def test_coverage_on_a_simulated_null_is_about_95_percent():
    """200 simulated datasets with a known true delta of 0 (both branches draw outcomes from the same
    probabilities): about 95% of the intervals contain it (binomial sd at 200: 1.5 points)."""
    rng = np.random.default_rng(12)
    covered = 0
    n, trials = 150, 200
    p = rng.uniform(0.2, 0.8, n)  # per-image difficulty shared by both branches
    for t in range(trials):
        acc = IntervalAccumulator(resamples=200, seed=t, threshold_split="test")
        on_result = acc.callback(0)
        for branch in ("softmax", "sigmoid"):
            known = rng.random(n) < p
            b = NS(
                per_image_multi=np.repeat(known[:, None, None], 3, axis=1).repeat(2, axis=2),
                per_image_single=np.zeros((n, 3, 2), bool),
                per_image_gt_known=known,
                per_image_top1_loc=known,
            )
            on_result(("clean", "cam", branch, "test"), b, None, None)
        row = rows_by_metric(acc)["gt_known_loc"]
        covered += row["low"] <= 0 <= row["high"]
    assert 0.90 <= covered / trials <= 0.99, covered


def test_one_result_object_under_several_keys_gives_the_same_table():
    """A result scored once and given under several keys (aliased variants, the softmax branch of every seed)
    has its resampled sums computed once; the table equals the one from separate copies."""
    import copy

    rng = np.random.default_rng(8)
    soft, sigs = dataset(rng), [dataset(rng) for _ in range(3)]
    shared, copied = IntervalAccumulator(resamples=80, seed=2), IntervalAccumulator(resamples=80, seed=2)
    for seed in range(3):
        for variant in ("cam", "gradcam"):
            feed(shared, seed, variant, soft, sigs[seed])
            feed(copied, seed, variant, copy.deepcopy(soft), copy.deepcopy(sigs[seed]))
    assert shared.table() == copied.table()
    assert len(shared._sums) == 2 * (1 + 3)  # (test, val) x (the softmax result + one sigmoid result per seed)
    assert len(shared._reduced) == 1 + 3  # reduced once per distinct (test, val) pair of results
    assert len(copied._reduced) == 2 * 3 * 2  # variants x seeds x branches: no two copies share an object


def test_count_products_are_exact_in_float32_only_where_that_is_exact():
    from pipeline.metrics.intervals import _count_product

    rng = np.random.default_rng(9)
    w = count_matrix(resample_indices(3, 0, 40, 50))
    counts = rng.integers(0, 9216, (40, 30))  # a 96 x 96 map's pixel counts: the float32 path
    assert np.array_equal(_count_product(w, w.astype(np.float64), counts), w.astype(np.float64) @ counts)
    # two images whose counts sum to 2**24 + 1, which float32 cannot hold: the float64 path, exactly
    big = np.array([[2**23 + 1], [2**23]])
    ones = np.ones((1, 2), dtype=np.float32)
    assert _count_product(ones, ones.astype(np.float64), big)[0, 0] == 2**24 + 1
    assert float((ones @ big.astype(np.float32))[0, 0]) != 2**24 + 1  # what the guard prevents


def test_levels_by_hand():
    """Two baselines x two fine-tuning replicates, no image noise: baseline means 2 and 6 (variance 8, / 2 = 4
    for the mean), within-baseline sum of squares 4 over 2 df -> 2 per model, / 4 models = 0.5 fine-tuning,
    3.5 baseline; t with 1 df."""
    c = combine({(0, 0): 1.0, (0, 1): 3.0, (1, 0): 5.0, (1, 1): 7.0}, np.zeros(50))
    assert c.delta == 4.0 and c.variances == {"images": 0.0, "finetune": 0.5, "baseline": 3.5}
    assert c.df == pytest.approx(1.0) and c.se == pytest.approx(2.0)
    assert c.high - c.delta == pytest.approx(student_t.ppf(0.975, 1) * 2.0)
    # one replicate per baseline: the fine-tuning level is inside the baseline level, not separable
    one = combine({(0, 0): 1.0, (1, 0): 3.0, (2, 0): 8.0}, np.zeros(50))
    assert one.variances["finetune"] is None and one.variances["baseline"] == pytest.approx(
        np.var([1, 3, 8], ddof=1) / 3
    )
    # one baseline: the baseline level is absent, the fine-tuning level is the replicates' spread
    fixed = combine({(0, 0): 1.0, (0, 1): 3.0}, np.zeros(50))
    assert fixed.variances["baseline"] is None and fixed.variances["finetune"] == pytest.approx(1.0)
    # one model: images alone, the normal quantile
    rng = np.random.default_rng(0)
    reps = rng.normal(0.0, 1.0, 4000)
    alone = combine({(0, 0): 0.5}, reps)
    assert alone.df == float("inf") and alone.variances["finetune"] is None and alone.variances["baseline"] is None
    assert alone.high - alone.delta == pytest.approx(norm.ppf(0.975) * reps.std(ddof=1))


def test_stratified_resamples_keep_the_classes():
    labels = np.repeat(np.arange(4), [3, 5, 2, 6])
    idx = resample_indices(1, 0, len(labels), 50, strata=labels)
    assert (labels[idx] == labels[None, :]).all()  # every position is filled from its own class
    counts = count_matrix(idx)[:-1]
    for c in range(4):
        assert (counts[:, labels == c].sum(axis=1) == (labels == c).sum()).all()
    assert len({tuple(row) for row in idx}) > 40  # and the draws vary
    with pytest.raises(ValueError, match="strata: 3 labels for 16 images"):
        resample_indices(1, 0, 16, 5, strata=[0, 1, 2])


def test_fixed_thresholds_use_the_full_data_choice_for_every_resample():
    rng = np.random.default_rng(5)
    data = {b: dataset(rng) for b in ("softmax", "sigmoid")}
    acc = IntervalAccumulator(resamples=40, seed=2, thresholds="fixed")
    feed(acc, 0, "cam", data["softmax"], data["sigmoid"])
    soft = acc._values[("clean", "cam", "softmax", (0, 0))]["maxboxacc_iou50"]
    (bt, _, _), (bv, _, _) = data["softmax"]["test"], data["softmax"]["val"]
    j = int(np.argmax(bv.per_image_multi[:, 1].sum(axis=0)))
    w = count_matrix(resample_indices(2, 0, len(bt.per_image_gt_known), 40))
    assert np.allclose(soft, 100 * w @ bt.per_image_multi[:, 1, j] / len(bt.per_image_gt_known))


def test_three_level_coverage_on_simulated_runs_with_a_known_answer():
    """300 simulated runs of 3 baselines x 2 fine-tuning replicates, true mean delta 0: each baseline shifts the
    sigmoid branch's success probability by N(0, 0.06^2), each replicate by N(0, 0.02^2) more, on shared
    images of varied difficulty. The interval must cover 0 in about 95% of runs (binomial sd 1.3 points),
    where an image-only interval would miss far more often."""
    rng = np.random.default_rng(21)
    n, runs = 200, 300
    covered = covered_images_only = 0
    for run in range(runs):
        p = rng.uniform(0.3, 0.7, n)
        acc = IntervalAccumulator(resamples=200, seed=run, threshold_split="test")
        soft = {j: rng.random(n) < p for j in range(3)}
        for j in range(3):
            beta = rng.normal(0.0, 0.06)
            for k in range(2):
                sig = rng.random(n) < np.clip(p + beta + rng.normal(0.0, 0.02), 0, 1)
                for branch, known in (("softmax", soft[j]), ("sigmoid", sig)):
                    b = NS(
                        per_image_multi=np.repeat(known[:, None, None], 3, axis=1).repeat(2, axis=2),
                        per_image_single=np.zeros((n, 3, 2), bool),
                        per_image_gt_known=known,
                        per_image_top1_loc=known,
                    )
                    acc.add((j, k), ("clean", "cam", branch, "test"), b)
        row = rows_by_metric(acc)["gt_known_loc"]
        covered += row["low"] <= 0 <= row["high"]
        half_images = norm.ppf(0.975) * row["se"] * row["levels"]["images"] ** 0.5
        covered_images_only += abs(row["delta"]) <= half_images
    assert 0.92 <= covered / runs <= 0.99, covered
    assert covered_images_only / runs < 0.8, covered_images_only


def test_split_thresholds_add_the_val_choice_measured_on_the_full_test_counts():
    """`split` (the default): the test level at the full-data val choice, plus how far the replicate's own val
    choice moves the accuracy on the full test counts (its variance weighted by SELECTION_WEIGHT); the
    full-data row is the evaluator's number."""
    rng = np.random.default_rng(6)
    data = {b: dataset(rng) for b in ("softmax", "sigmoid")}
    acc = IntervalAccumulator(resamples=40, seed=2)
    assert acc.thresholds == "split"
    feed(acc, 0, "cam", data["softmax"], data["sigmoid"])
    got = acc._values[("clean", "cam", "softmax", (0, 0))]["maxboxacc_iou50"]
    (bt, _, _), (bv, _, _) = data["softmax"]["test"], data["softmax"]["val"]
    n, n_val = len(bt.per_image_gt_known), len(bv.per_image_gt_known)
    w_test = count_matrix(resample_indices(2, 0, n, 40))
    w_val = count_matrix(resample_indices(2, 1, n_val, 40))
    full = bt.per_image_multi[:, 1].sum(axis=0)  # correct images per threshold, all test images
    j = int(np.argmax(bv.per_image_multi[:, 1].sum(axis=0)))
    for r in range(41):
        j_r = int(np.argmax(w_val[r] @ bv.per_image_multi[:, 1]))
        want = (w_test[r] @ bt.per_image_multi[:, 1, j] + SELECTION_WEIGHT**0.5 * (full[j_r] - full[j])) / n
        assert got[r] == pytest.approx(100 * want, abs=1e-9), r
    assert got[-1] == pytest.approx(100 * full[j] / n)


def test_count_columns_are_the_count_matrix_columns():
    """A rank's columns of the count matrix, drawn with the same RNG calls one stratum at a time, equal the
    whole matrix's columns, with and without strata, for any range."""
    rng = np.random.default_rng(0)
    n, r = 37, 50
    strata = rng.integers(0, 4, n)
    for s in (None, strata):
        whole = count_matrix(resample_indices(5, 1, n, r, s))
        for lo, hi in ((0, n), (0, 10), (10, 29), (29, n), (36, 37), (12, 12)):
            part = count_columns(5, 1, n, r, s, lo, hi)
            assert part.dtype == np.float32 and part.flags.c_contiguous
            np.testing.assert_array_equal(part, whole[:, lo:hi])
    with pytest.raises(ValueError, match="columns 30..40 are not within the 37 images"):
        count_columns(5, 1, n, r, strata, 30, 40)
