"""The evaluate stage's peak memory per process and work per rank against the test-set size and rank count.

For each size N (test images; val = 2/5 N as in SynthBirds) a synthetic 224-px workspace (3 models: 3 baselines
x 1 fine-tuning replicate, 14 x 14 float32 maps, both target kinds, the 5 CAM-family variants, all 3 protocols,
thresholds on val, 1000 bootstrap resamples, fidelity on; benchmarks/synthetic_workspace.py) is built under
--workdir (or reused), and for each rank count P `python -m pipeline.stages.evaluate` runs in it exactly as
under DVC, with `distributed.nproc: P` in its data/params.json (P > 1: the stage re-launches itself under
torchrun, pipeline/dist.py). Per run:

  - the peak RSS of every process of the run (the stage's launcher, torchrun, each rank): the process tree's
    /proc/<pid>/status VmHWM (the kernel's high-water mark) polled every --poll s, each pid's last value kept
    (growth in a process's last poll interval can be missed); the largest peak of a single process is checked
    against getrusage(RUSAGE_CHILDREN).ru_maxrss of a wrapper process around the run (exact);
  - the wall time and the CPU seconds (user + sys) of the whole tree (the wrapper's RUSAGE_CHILDREN: exact);
  - work per rank: with EVALUATE_WORK_LOG=<dir> set, an engine that supports it writes <dir>/rank_<r>.json
    ({"rank", "world", "phases": {phase: {counter: value}}, "cpu_s": {phase: seconds}}); every counter's per-rank
    value and its ratio to the single-process value (about 1/P where the phase divides over the ranks) is
    printed; absent files are reported as such;
  - byte-identity: reports/metrics.json, reports/intervals.json and every curve CSV under reports/plots/ of a
    P-rank run against those of the 1-rank run of the same workspace (cmp).

From the sizes measured it fits, per rank count, peak RSS per rank = fixed + slope x N (least squares), and
prints the slope in KB per test image, the fixed part in GiB (targets: <= 40 KB per test image, < 3 GiB) and
the CPU ms per test image per model (the tree's CPU seconds / (N x models); with several sizes also the fitted
marginal cost). Ratios are against the 1-rank run of the same size in the same invocation; with --rounds R
each (size, ranks) runs R times and the medians are reported (the CPU is shared and noisy: read the ratios).
Results: benchmarks/results/evaluate_scale.json and .md (generated here, one section per --label, so the
numbers before and after an engine change sit side by side; a label's section is replaced when it is rerun).
A run whose process tree's RSS exceeds --mem-limit-gib is stopped and recorded as such.

    python benchmarks/bench_evaluate_scale.py --label before --sizes 1000 --ranks 1 2
    python benchmarks/bench_evaluate_scale.py --label after              # 1k, 4k, 16k x 1, 2, 4 ranks
    python benchmarks/bench_evaluate_scale.py --quick                    # 100 and 200 images, 1 and 2 ranks
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.synthetic_workspace import make_workspace, set_nproc  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "evaluate_scale"
SIZES = (1000, 4000, 16000)
RANKS = (1, 2, 4)
QUICK_SIZES = (100, 200)
QUICK_RANKS = (1, 2)
TARGET_SLOPE_KB = 40.0  # per test image, per rank
TARGET_FIXED_GIB = 3.0
KB_PER_GIB = 1024 * 1024
CODE_FILES = ("pipeline/stages/evaluate.py", "pipeline/metrics", "pipeline/dist.py", "pipeline/cams/store.py")

# Runs the command, waits, and writes the tree's resource usage (every descendant waited for) as JSON.
WRAPPER = """
import json, resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as fh:
    json.dump({"rc": rc, "utime": r.ru_utime, "stime": r.ru_stime, "maxrss_kb": r.ru_maxrss}, fh)
sys.exit(rc)
"""


# ----------------------------------------------------------------------------------------------------
# One run


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def _cmd_env(pid: int) -> tuple[str, dict]:
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
    return b" ".join(cmd).decode(errors="replace"), env


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class TreeWatch(threading.Thread):
    """Polls the process tree under `pid` (the wrapper): each pid's last VmHWM and its role (`stage`: the stage
    process the wrapper started, the launcher of a multi-rank run; `torchrun`; `rank` r; `helper`: any other
    descendant, counted with the stage process or rank it descends from, its `owner`), and the largest sum of
    VmRSS over the tree; stops the tree (its own process group) when that sum passes `limit_kb`."""

    def __init__(self, pid: int, interval: float, limit_kb: int | None, pss: bool = True):
        super().__init__(daemon=True)
        self.pid, self.interval, self.limit_kb, self.pss = pid, interval, limit_kb, pss
        self.procs: dict[int, dict] = {}
        self.peak_total_kb = 0
        # PSS (shared pages divided among their sharers; polled, no kernel high-water mark): the tree's total and
        # per stage process or rank with its helpers, which forked helpers' VmHWM would count several times
        self.peak_total_pss_kb = 0
        self.peak_group_pss_kb: dict[int, int] = {}
        self.killed = False
        self.done = threading.Event()

    def _identify(self, pid: int, ppid: int) -> dict | None:
        if pid == self.pid:
            return {"role": "wrapper", "rank": None, "owner": None}
        parent = self.procs.get(ppid)
        if parent is None:
            return None  # its parent first (next poll)
        try:
            text, env = _cmd_env(pid)
        except OSError:
            return None
        if parent["role"] == "wrapper":
            return {"role": "stage", "rank": None, "owner": pid}
        if "torch.distributed.run" in text:
            return {"role": "torchrun", "rank": None, "owner": None}
        if parent["role"] == "torchrun" and b"RANK" in env:
            return {"role": "rank", "rank": int(env[b"RANK"]), "owner": pid}
        return {"role": "helper", "rank": parent["rank"], "owner": parent["owner"]}

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total, pss_total, pss_group = 0, 0, {}
            for p in tree:
                try:
                    st = _status(p.pid)
                    entry = self.procs.get(p.pid)
                    if entry is None:
                        who = self._identify(p.pid, p.ppid())
                        if who is None:
                            continue
                        entry = self.procs[p.pid] = {"pid": p.pid, **who, "hwm_kb": 0}
                except (OSError, ValueError, psutil.Error):
                    continue
                entry["hwm_kb"] = max(entry["hwm_kb"], st.get("VmHWM", 0))
                total += st.get("VmRSS", 0)
                if self.pss:
                    pss = _pss(p.pid)
                    pss_total += pss
                    if entry["owner"] is not None:
                        pss_group[entry["owner"]] = pss_group.get(entry["owner"], 0) + pss
            self.peak_total_kb = max(self.peak_total_kb, total)
            self.peak_total_pss_kb = max(self.peak_total_pss_kb, pss_total)
            for owner, kb in pss_group.items():
                self.peak_group_pss_kb[owner] = max(self.peak_group_pss_kb.get(owner, 0), kb)
            if self.limit_kb is not None and total > self.limit_kb and not self.killed:
                self.killed = True
                with _suppress():
                    os.killpg(self.pid, signal.SIGKILL)  # the run's own process group (start_new_session)
            self.done.wait(self.interval)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, OSError)


def _env(work_log: Path, code: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TQDM_DISABLE", "1")
    env["EVALUATE_WORK_LOG"] = str(work_log)
    env.pop("DVC_STAGE", None)
    return env


OUTPUTS = ("reports/metrics.json", "reports/intervals.json")


def output_files(ws: Path) -> list[str]:
    """The files compared across rank counts: metrics.json, intervals.json and every curve CSV."""
    curves = sorted(p.relative_to(ws).as_posix() for p in (ws / "reports" / "plots").rglob("*.csv"))
    return [f for f in OUTPUTS if (ws / f).is_file()] + curves


def run_once(ws: Path, nproc: int, tag: str, *, code: Path, poll: float, timeout: float, limit_kb: int | None) -> dict:
    """One evaluate run in workspace `ws` with `nproc` ranks, the `pipeline` package (and dvc.yaml) of `code`."""
    shutil.copyfile(code / "dvc.yaml", ws / "dvc.yaml")  # the stage's declared keys, as the code under test has them
    set_nproc(ws, nproc)
    shutil.rmtree(ws / "reports", ignore_errors=True)
    work_log = ws / "worklog" / tag
    shutil.rmtree(work_log, ignore_errors=True)
    work_log.mkdir(parents=True)
    (ws / "logs").mkdir(exist_ok=True)
    usage_file, log_file = ws / "logs" / f"{tag}.usage.json", ws / "logs" / f"{tag}.log"
    usage_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", WRAPPER, str(usage_file), sys.executable, "-m", "pipeline.stages.evaluate"]
    began = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ws, env=_env(work_log, code), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        watch = TreeWatch(proc.pid, poll, limit_kb)
        watch.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with _suppress():
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            rc = f"timeout after {timeout:.0f} s"
        wall = time.perf_counter() - began
        watch.done.set()
        watch.join()
    usage = json.loads(usage_file.read_text()) if usage_file.is_file() else {}
    procs = sorted(watch.procs.values(), key=lambda p: (p["role"] != "rank", p["rank"] or 0, p["pid"]))
    # the processes that compute: the ranks, or the stage process itself with 1 rank
    workers = [p for p in procs if p["role"] == "rank"] or [p for p in procs if p["role"] == "stage"]
    groups = [
        p["hwm_kb"] + sum(q["hwm_kb"] for q in procs if q["role"] == "helper" and q["owner"] == p["pid"])
        for p in workers
    ]
    if watch.killed:
        rc = "stopped: the tree's RSS passed --mem-limit-gib"
    logs = {}
    for f in sorted(work_log.glob("rank_*.json")):
        with _suppress():
            logs[f.stem] = json.loads(f.read_text())
    return {
        "rc": rc,
        "ok": rc == 0,
        "wall_s": wall,
        "cpu_s": (usage.get("utime", 0.0) + usage.get("stime", 0.0)) if usage else None,
        "maxrss_kb_rusage": usage.get("maxrss_kb"),
        "peak_rank_kb": max((p["hwm_kb"] for p in workers), default=None),
        "rank_hwm_kb": [p["hwm_kb"] for p in workers],
        "rank_with_helpers_kb": groups,  # a rank's own peak plus its helper processes' (an upper bound)
        "rank_group_pss_kb": [watch.peak_group_pss_kb.get(p["pid"]) for p in workers],
        "peak_rank_group_pss_kb": max((watch.peak_group_pss_kb.get(p["pid"], 0) for p in workers), default=None),
        "peak_tree_rss_kb": watch.peak_total_kb,
        "peak_tree_pss_kb": watch.peak_total_pss_kb,
        "processes": [
            {k: p[k] for k in ("pid", "role", "rank", "owner", "hwm_kb")} for p in procs if p["role"] != "wrapper"
        ],
        "work_log": logs,
        "log": str(log_file),
        "log_tail": log_file.read_text().splitlines()[-3:] if log_file.is_file() else [],
    }


def keep_reference(ws: Path) -> None:
    ref = ws / "reference_p1"
    shutil.rmtree(ref, ignore_errors=True)
    for f in output_files(ws):
        (ref / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ws / f, ref / f)


def compare_reference(ws: Path) -> dict:
    ref = ws / "reference_p1"
    if not ref.is_dir():
        return {"checked": 0, "differ": [], "missing": [], "note": "no 1-rank reference"}
    want = sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file())
    have = set(output_files(ws))
    differ = [f for f in want if f in have and not filecmp.cmp(ref / f, ws / f, shallow=False)]
    missing = [f for f in want if f not in have] + sorted(have - set(want))
    # metrics.json's params_digest covers distributed.nproc (declared by the training stages, whose bytes depend
    # on it): a workspace that changes only evaluate's nproc changes the digest and nothing else
    only_digest = False
    if differ == ["reports/metrics.json"] and not missing:
        a, b = (json.loads((d / differ[0]).read_text()) for d in (ref, ws))
        only_digest = {k: v for k, v in a.items() if k != "params_digest"} == {
            k: v for k, v in b.items() if k != "params_digest"
        }
    return {
        "checked": len(want),
        "differ": differ,
        "missing": missing,
        "identical": not differ and not missing,
        "identical_but_params_digest": only_digest,
        "equivalent": (not differ and not missing) or only_digest,
    }


# ----------------------------------------------------------------------------------------------------
# Summaries


def flat(counters: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in counters.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def work_table(single: dict, multi: dict) -> list[dict]:
    """Per counter of the work logs: the 1-rank value, the P ranks' values, each rank's ratio to the 1-rank
    value and the ranks' sum over it."""
    base = flat({k: v for k, v in (single.get("rank_0") or {}).items() if k not in ("rank", "world")})
    ranks = [
        flat({k: v for k, v in log.items() if k not in ("rank", "world")})
        for _, log in sorted(multi.items(), key=lambda kv: int(kv[0].split("_")[1]))
    ]
    rows = []
    for key in sorted(set(base) | {k for r in ranks for k in r}):
        one = base.get(key)
        values = [r.get(key) for r in ranks]
        ratios = [None if (v is None or not one) else v / one for v in values]
        total = sum(v for v in values if v is not None)
        rows.append(
            {
                "counter": key,
                "single": one,
                "per_rank": values,
                "ratio": ratios,
                "sum_ratio": None if not one else total / one,
            }
        )
    return rows


def fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of y on x; None with fewer than 2 distinct x."""
    xs = {x for x, _ in points}
    if len(xs) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - slope * mx, slope


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: dict, models: int) -> dict:
    """Per (size, ranks) the medians over rounds, the ratios to 1 rank, and per rank count the fits."""
    cells = {}
    for (size, nproc), rounds in runs.items():
        ok = [r for r in rounds if r["ok"]]
        cell = {
            "size": size,
            "ranks": nproc,
            "rounds": len(rounds),
            "ok": len(ok),
            "failures": [str(r["rc"]) for r in rounds if not r["ok"]],
            "wall_s": median(r["wall_s"] for r in ok),
            "cpu_s": median(r["cpu_s"] for r in ok),
            "peak_rank_kb": median(r["peak_rank_kb"] for r in ok),
            "rank_hwm_kb": ok[0]["rank_hwm_kb"] if ok else [],
            "peak_tree_rss_kb": median(r["peak_tree_rss_kb"] for r in ok),
            "peak_tree_pss_kb": median(r.get("peak_tree_pss_kb") for r in ok),
            "peak_rank_group_pss_kb": median(r.get("peak_rank_group_pss_kb") for r in ok),
            "helpers": any(p["role"] == "helper" for r in ok for p in r["processes"]),
            "maxrss_kb_rusage": median(r["maxrss_kb_rusage"] for r in ok),
            "processes": ok[0]["processes"] if ok else (rounds[0]["processes"] if rounds else []),
            "identical": [r.get("identical") for r in ok if r.get("identical") is not None],
            "bytes_identical": [r["compare"]["identical"] for r in ok if "compare" in r],
            "work_log": bool(ok and ok[0]["work_log"]),
        }
        if cell["cpu_s"] is not None:
            cell["cpu_ms_per_image_model"] = 1e3 * cell["cpu_s"] / (size * models)
        cells[(size, nproc)] = cell
    for (size, nproc), cell in cells.items():
        base = cells.get((size, 1))
        if nproc != 1 and base and base["ok"] and cell["ok"]:
            cell["vs_1_rank"] = {
                "wall": cell["wall_s"] / base["wall_s"],
                "cpu": cell["cpu_s"] / base["cpu_s"],
                "peak_rank_rss": cell["peak_rank_kb"] / base["peak_rank_kb"],
            }
            cell["work"] = work_table(runs[(size, 1)][0]["work_log"], runs[(size, nproc)][0]["work_log"])
    fits = {}
    for nproc in sorted({p for _, p in cells}):
        pts = [(s, c["peak_rank_kb"]) for (s, p), c in cells.items() if p == nproc and c["peak_rank_kb"]]
        cpu = [(s, 1e3 * c["cpu_s"] / models) for (s, p), c in cells.items() if p == nproc and c["cpu_s"]]
        entry = {"sizes": sorted(s for s, _ in pts)}
        rss = fit(pts)
        if rss:
            entry["fixed_gib"] = rss[0] / KB_PER_GIB
            entry["slope_kb_per_image"] = rss[1]
            entry["meets_target"] = rss[1] <= TARGET_SLOPE_KB and rss[0] / KB_PER_GIB < TARGET_FIXED_GIB
        group = fit(
            [
                (s, c["peak_rank_group_pss_kb"])
                for (s, p), c in cells.items()
                if p == nproc and c.get("peak_rank_group_pss_kb")
            ]
        )
        if group:
            entry["group_pss_fixed_gib"] = group[0] / KB_PER_GIB
            entry["group_pss_slope_kb_per_image"] = group[1]
        cost = fit(cpu)
        if cost:
            entry["cpu_ms_per_image_model_marginal"] = cost[1]
        fits[nproc] = entry
    return {"cells": cells, "fits": fits}


def _who(p: dict) -> str:
    return p["role"] if p["rank"] is None else f"{p['role']} of rank {p['rank']}"


def gib(kb):
    return "n/a" if kb is None else f"{kb / KB_PER_GIB:.2f}"


def fmt(value, spec=".2f"):
    return "n/a" if value is None else format(value, spec)


def render(label: str, result: dict) -> list[str]:
    s, env = result["summary"], result["environment"]
    lines = [
        f"## `{label}`",
        "",
        f"Code: commit {env['commit']}{' + uncommitted changes' if env['dirty'] else ''}, evaluate code digest "
        f"`{env['code_digest']}`; {env['cpus']} CPUs, Python {env['python']}, {env['date']}. Workspace: "
        f"{result['workspace']['description']}. {result['rounds']} round(s) per cell (medians)."
        + (
            f" Merged with the cells of an earlier invocation ({result['merged_with']['date']}, code digest "
            f"`{result['merged_with']['code_digest']}`)."
            if result.get("merged_with")
            else ""
        )
        + ("" if result.get("complete", True) else " **Incomplete**: the invocation was still running or stopped."),
        "",
        "| test images | ranks | wall s | CPU s (tree) | CPU ms / image / model | peak RSS per rank GiB "
        "| each rank GiB | rank + its helpers, PSS GiB | other processes GiB | peak tree RSS / PSS GiB "
        "| vs 1 rank: wall, CPU, RSS/rank | outputs = 1 rank |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (size, nproc), c in sorted(s["cells"].items()):
        if not c["ok"]:
            lines.append(f"| {size:,} | {nproc} | failed: {'; '.join(c['failures'])} | | | | | | | | | |")
            continue
        others = ", ".join(
            f"{_who(p)} {gib(p['hwm_kb'])}"
            for p in c["processes"]
            if p["role"] != "rank" and not (p["role"] == "stage" and nproc == 1)
        )
        vs = c.get("vs_1_rank")
        ratios = "-" if not vs else f"{vs['wall']:.2f}, {vs['cpu']:.2f}, {vs['peak_rank_rss']:.2f}"
        if nproc == 1:
            ident = "n/a (the reference)"
        elif c["bytes_identical"] and all(c["bytes_identical"]):
            ident = "yes, byte for byte"
        elif c["identical"] and all(c["identical"]):
            ident = "yes but metrics.json's params_digest (it covers distributed.nproc)"
        else:
            ident = "NO"
        lines.append(
            f"| {size:,} | {nproc} | {fmt(c['wall_s'], '.1f')} | {fmt(c['cpu_s'], '.1f')} "
            f"| {fmt(c.get('cpu_ms_per_image_model'), '.1f')} | {gib(c['peak_rank_kb'])} "
            f"| {', '.join(gib(k) for k in c['rank_hwm_kb'])} | {gib(c.get('peak_rank_group_pss_kb'))} "
            f"| {others or '-'} | {gib(c['peak_tree_rss_kb'])} / {gib(c.get('peak_tree_pss_kb'))} "
            f"| {ratios} | {ident} |"
        )
    lines += ["", "Fit per rank count: peak RSS per rank = fixed + slope x test images (least squares).", ""]
    lines += [
        "| ranks | sizes | slope KB / test image | fixed GiB | target (<= 40 KB, < 3 GiB) "
        "| rank + helpers (PSS): slope KB, fixed GiB | CPU ms / image / model (marginal) |",
        "|---|---|---|---|---|---|---|",
    ]
    for nproc, f in sorted(s["fits"].items()):
        meets = f.get("meets_target")
        lines.append(
            f"| {nproc} | {', '.join(f'{x:,}' for x in f['sizes'])} | {fmt(f.get('slope_kb_per_image'), '.0f')} "
            f"| {fmt(f.get('fixed_gib'))} | {'n/a (one size)' if meets is None else ('met' if meets else 'not met')} "
            f"| {fmt(f.get('group_pss_slope_kb_per_image'), '.0f')}, {fmt(f.get('group_pss_fixed_gib'))} "
            f"| {fmt(f.get('cpu_ms_per_image_model_marginal'), '.1f')} |"
        )
    work = [(k, c) for k, c in sorted(s["cells"].items()) if c.get("work")]
    lines.append("")
    if not any(c["work_log"] for c in s["cells"].values()):
        lines.append("Work per rank: no rank_<r>.json under EVALUATE_WORK_LOG (this engine does not write them).")
    for (size, nproc), c in work:
        lines += [
            "",
            f"Work per rank, {size:,} test images, {nproc} ranks (ratio to 1 rank; about 1/{nproc} when divided):",
            "",
            "| counter | 1 rank | per rank | ratio per rank | sum / 1 rank |",
            "|---|---|---|---|---|",
        ]
        for row in c["work"]:
            lines.append(
                f"| {row['counter']} | {fmt(row['single'], '.6g')} "
                f"| {', '.join(fmt(v, '.6g') for v in row['per_rank'])} "
                f"| {', '.join(fmt(v, '.3f') for v in row['ratio'])} | {fmt(row['sum_ratio'], '.3f')} |"
            )
    return lines + [""]


def render_all(doc: dict) -> str:
    lines = [
        "# evaluate: peak memory and work per rank against test-set size",
        "",
        "Generated by `benchmarks/bench_evaluate_scale.py` (do not edit). Peak RSS: each process's VmHWM; "
        "`peak RSS per rank` is the largest over the ranks (the stage process itself with 1 rank); the other "
        "processes of a multi-rank run are the stage's launcher and torchrun. CPU s: user + sys of the whole "
        "process tree. Timings on a shared CPU: compare within a section.",
        "",
    ]
    for label, result in doc["labels"].items():
        lines += render(label, result)
    labels = list(doc["labels"])
    if len(labels) >= 2:
        a, b = labels[0], labels[-1]
        ca, cb = doc["labels"][a]["summary"]["cells"], doc["labels"][b]["summary"]["cells"]
        common = sorted(set(ca) & set(cb))
        if common:
            lines += [
                f"## `{b}` against `{a}` (peak RSS per rank; separate invocations)",
                "",
                f"| test images | ranks | `{a}` GiB | `{b}` GiB | ratio |",
                "|---|---|---|---|---|",
            ]
            for key in common:
                x, y = ca[key]["peak_rank_kb"], cb[key]["peak_rank_kb"]
                ratio = fmt(y / x) if x and y else "n/a"
                lines.append(f"| {key[0]:,} | {key[1]} | {gib(x)} | {gib(y)} | {ratio} |")
            lines.append("")
    return "\n".join(lines)


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export_code(ref: str, workdir: Path) -> Path:
    """The files the stage needs (pipeline/, dvc.yaml, params.yaml) at git revision `ref`, extracted with
    `git archive` (read-only on the repository) under `workdir`; reused when present."""
    commit = git("rev-parse", "--short", ref)
    if commit == "unknown":
        raise SystemExit(f"error: --code-ref {ref}: not a revision of {ROOT}")
    out = workdir / f"code_{commit}"
    if not (out / ".complete").is_file():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "pipeline", "dvc.yaml", "params.yaml"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
        (out / ".complete").write_text(commit + "\n")
    return out


def environment(code: Path, ref: str | None) -> dict:
    h = hashlib.sha256()
    for name in CODE_FILES:
        path = code / name
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(code).as_posix().encode())
            h.update(f.read_bytes())
    return {
        "code": str(code),
        "commit": git("rev-parse", "--short", ref or "HEAD"),
        "dirty": False if ref else bool(git("status", "--porcelain", "--", *CODE_FILES)),
        "code_digest": h.hexdigest()[:12],
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _json_key(cells: dict) -> dict:
    return {f"{s}x{p}": c for (s, p), c in cells.items()}


def _from_json(cells: dict) -> dict:
    return {tuple(int(x) for x in k.split("x")): c for k, c in cells.items()}


def load_doc(path: Path) -> dict:
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            for result in doc["labels"].values():
                result["summary"]["cells"] = _from_json(result["summary"]["cells"])
                result["summary"]["fits"] = {int(k): v for k, v in result["summary"]["fits"].items()}
            return doc
        except (ValueError, KeyError):
            pass
    return {"labels": {}}


def save_doc(doc: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = {"labels": {}}
    for label, result in doc["labels"].items():
        r = dict(result, summary=dict(result["summary"], cells=_json_key(result["summary"]["cells"])))
        out["labels"][label] = r
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    stem.with_suffix(".md").write_text(render_all(doc))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help=f"test images (default {SIZES})")
    ap.add_argument("--ranks", type=int, nargs="+", default=None, help=f"distributed.nproc values (default {RANKS})")
    ap.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, ranks {QUICK_RANKS}, 1 round")
    ap.add_argument("--rounds", type=int, default=1, help="runs per (size, ranks); medians reported")
    ap.add_argument("--val-ratio", type=float, default=0.4, help="val images per test image (SynthBirds: 0.4)")
    ap.add_argument("--size", type=int, default=224, help="input and evaluation size (px)")
    ap.add_argument("--feature", type=int, default=14, help="CAM maps' side")
    ap.add_argument("--bootstrap", type=int, default=1000, help="evaluate.bootstrap_resamples")
    ap.add_argument(
        "--no-fidelity",
        dest="fidelity",
        action="store_false",
        help="evaluate.fidelity off: the CPU side alone (Average Drop's forwards belong on a GPU)",
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/evalscale"))
    ap.add_argument("--label", default="current", help="the section of the results this run fills")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the label's earlier cells (size, ranks) that this invocation does not rerun",
    )
    ap.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="LABEL",
        help="also take the cells (size, ranks) of LABEL in the results file that this invocation does not run "
        "(the same code, measured in another invocation)",
    )
    ap.add_argument(
        "--render-only", action="store_true", help="run nothing: re-summarise the label's stored runs (and --import)"
    )
    ap.add_argument(
        "--code-ref",
        default=None,
        help="run the stage of this git revision (e.g. HEAD: the committed code, not the working tree), "
        "extracted with git archive under --workdir; default: this checkout as it is",
    )
    ap.add_argument("--out", type=Path, default=None, help=f"results stem (default {RESULTS}; --quick: none)")
    ap.add_argument("--poll", type=float, default=0.2, help="seconds between polls of the process tree")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per run")
    ap.add_argument(
        "--mem-limit-gib",
        type=float,
        default=None,
        help="stop a run whose tree's RSS passes this (default: 85%% of MemAvailable at start)",
    )
    args = ap.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    ranks = sorted(set(args.ranks or (QUICK_RANKS if args.quick else RANKS)))
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if args.mem_limit_gib is None:
        avail = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemAvailable:"))
        limit_kb = int(0.85 * avail)
    else:
        limit_kb = int(args.mem_limit_gib * KB_PER_GIB)
    code = export_code(args.code_ref, args.workdir) if args.code_ref else ROOT
    baselines, finetunes = 3, 1
    models = baselines * finetunes
    doc = load_doc(out.with_suffix(".json")) if out else {"labels": {}}
    earlier: dict = {}  # (size, ranks) -> runs kept from earlier invocations (--merge, --import)
    sources = ([args.label] if args.merge or args.render_only else []) + list(args.imports)
    for label in sources:
        for r in doc["labels"].get(label, {}).get("runs", []):
            key = (r["size"], r["ranks"])
            if key not in earlier or label == earlier[key][0]:
                earlier.setdefault(key, (label, []))[1].append(
                    {k: v for k, v in r.items() if k not in ("size", "ranks")}
                )
    merged_from = doc["labels"].get(args.label, {}).get("environment") if sources else None
    runs: dict = {}

    def publish(final: bool) -> dict:
        combined = {key: list(rr) for key, (_, rr) in earlier.items() if key not in runs}
        combined.update(runs)
        result = {
            "environment": environment(code, args.code_ref),
            "rounds": args.rounds,
            "complete": final,
            "workspace": {
                "description": f"SynthBirds-like, {args.size} px images and evaluation, {args.feature}x"
                f"{args.feature} float32 maps, {baselines} baselines x {finetunes} fine-tuning replicate, val = "
                f"{args.val_ratio:g} x test, protocols clean+official+official_symmetric, thresholds on val, "
                f"{args.bootstrap} bootstrap resamples, "
                + ("fidelity on (timm test_resnet)" if args.fidelity else "fidelity off"),
                "val_ratio": args.val_ratio,
                "size": args.size,
                "feature": args.feature,
                "models": models,
                "bootstrap_resamples": args.bootstrap,
                "fidelity": args.fidelity,
            },
            "summary": summarise(combined, models),
            "runs": [
                {"size": s, "ranks": p, **{k: v for k, v in r.items() if k != "log_tail"}}
                for (s, p), rr in sorted(combined.items())
                for r in rr
            ],
        }
        if not runs and sources:  # nothing measured now: what the stored runs were measured with
            stored = doc["labels"][next(iter(earlier.values()))[0]] if earlier else {}
            result.update({k: stored[k] for k in ("environment", "rounds", "workspace") if k in stored})
        elif merged_from and any(key not in runs for key in earlier):
            result["merged_with"] = merged_from
        doc["labels"][args.label] = result
        if out:
            save_doc(doc, out)
        return result

    for size in [] if args.render_only else sizes:
        val = max(1, round(size * args.val_ratio))
        tag = f"ws_{size}_v{val}_s{args.size}_f{args.feature}_b{args.bootstrap}" + ("" if args.fidelity else "_nofid")
        ws = make_workspace(
            args.workdir / tag,
            size,
            val,
            size=args.size,
            feature=args.feature,
            baselines=baselines,
            finetunes=finetunes,
            bootstrap_resamples=args.bootstrap,
            fidelity=args.fidelity,
        )
        for nproc in ranks:
            for r in range(args.rounds):
                print(
                    f"evaluate_scale: {size:,} test images, {nproc} rank(s), round {r + 1}/{args.rounds} ...",
                    flush=True,
                )
                res = run_once(
                    ws, nproc, f"p{nproc}_r{r}", code=code, poll=args.poll, timeout=args.timeout, limit_kb=limit_kb
                )
                if res["ok"] and nproc == 1 and r == 0:
                    keep_reference(ws)
                elif res["ok"] and nproc > 1:
                    res["compare"] = compare_reference(ws)
                    res["identical"] = res["compare"].get("equivalent")
                runs.setdefault((size, nproc), []).append(res)
                print(
                    f"  rc {res['rc']}, wall {res['wall_s']:.1f} s, CPU {fmt(res['cpu_s'], '.1f')} s, peak RSS per "
                    f"rank {gib(res['peak_rank_kb'])} GiB (ranks: {', '.join(gib(k) for k in res['rank_hwm_kb'])}), "
                    f"largest process (rusage) {gib(res['maxrss_kb_rusage'])} GiB, tree {gib(res['peak_tree_rss_kb'])}"
                    f" GiB"
                    + (
                        f", outputs identical to 1 rank: {res['compare']['identical']} (apart from params_digest: "
                        f"{res['identical']})"
                        if "compare" in res
                        else ""
                    ),
                    flush=True,
                )
                if "compare" in res and not res["compare"]["identical"]:
                    print(f"  differ: {res['compare']['differ']} missing: {res['compare']['missing']}", flush=True)
                if not res["ok"]:
                    print("  " + "\n  ".join(res["log_tail"]), flush=True)
                publish(final=False)  # partial results survive an interrupted invocation
    result = publish(final=True)
    print("\n" + "\n".join(render(args.label, result)))
    if out:
        print(f"evaluate_scale: results -> {out.with_suffix('.json')}, {out.with_suffix('.md')}")
    return 0 if all(r["ok"] for rr in runs.values() for r in rr) else 1


if __name__ == "__main__":
    raise SystemExit(main())
