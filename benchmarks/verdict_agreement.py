"""Do two runs of one configuration give the same verdicts? (issue 21: runs with disjoint seeds, or machines)

    python benchmarks/verdict_agreement.py A/reports/intervals.json B/reports/intervals.json \
        --names "seeds 42" "seeds 100/7" --out benchmarks/results/verdict_agreement

Compares the verdict of every (protocol, variant, metric) row of two `reports/intervals.json` files and writes
<out>.md (the agreement, the consistency, then every flipped row with both intervals and why it flipped) and
<out>.json.

Two runs of one configuration estimate the same true delta, so if each interval holds all the randomness, their
two estimates differ by less than t x sqrt(se_A^2 + se_B^2) in about 95% of rows (t from Welch-Satterthwaite's
degrees of freedom): that share is the *consistency*. A verdict can flip between consistent estimates: an
effect at the edge of detection is found by one run and not by the other, by nature ("edge"). A flip between
inconsistent estimates ("inconsistent") means the intervals still miss some of the randomness.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def consistent(ra: dict, rb: dict, confidence: float = 0.95) -> bool:
    """Whether two runs' estimates of one delta agree within their combined interval."""
    from scipy.stats import t as student_t

    se = (ra["se"] ** 2 + rb["se"] ** 2) ** 0.5
    if se == 0:
        return ra["delta"] == rb["delta"]
    dfs = [r["df"] if r.get("df") else float("inf") for r in (ra, rb)]
    df = se**4 / sum(r["se"] ** 4 / d for r, d in zip((ra, rb), dfs))
    return abs(ra["delta"] - rb["delta"]) <= student_t.ppf(0.5 + confidence / 2, df) * se


def compare(a: list[dict], b: list[dict]) -> dict:
    key = lambda r: (r["protocol"], r["variant"], r["metric"])  # noqa: E731
    rows_b = {key(r): r for r in b}
    flips, same, agreeing = [], 0, 0
    for ra in a:
        rb = rows_b.get(key(ra))
        if rb is None:
            continue
        ok = bool(consistent(ra, rb))
        agreeing += bool(ok)
        if ra["verdict"] == rb["verdict"]:
            same += 1
            continue
        flips.append(
            {
                "protocol": ra["protocol"],
                "variant": ra["variant"],
                "metric": ra["metric"],
                "kind": "edge" if ok else "inconsistent",
                "a": {k: ra[k] for k in ("delta", "low", "high", "verdict")},
                "b": {k: rb[k] for k in ("delta", "low", "high", "verdict")},
            }
        )
    total = same + len(flips)
    outside = sum(not (ra["low"] <= rows_b[key(ra)]["delta"] <= ra["high"]) for ra in a if key(ra) in rows_b)
    return {
        "rows": total,
        "agree": same,
        "share": same / total if total else None,
        "b_outside_a": outside,
        "consistent": agreeing,
        "consistent_share": agreeing / total if total else None,
        "flips": flips,
    }


def markdown(result: dict, names: tuple[str, str]) -> str:
    share = result["share"]
    lines = [
        f"Verdicts of {names[0]} and {names[1]} agree on **{result['agree']} of {result['rows']} rows "
        f"({100 * share:.1f}%)**. Their estimates are consistent (they differ by less than their combined "
        f"95% interval) on **{result['consistent']} of {result['rows']} rows "
        f"({100 * result['consistent_share']:.1f}%)**; flips: "
        f"{sum(f['kind'] == 'edge' for f in result['flips'])} at the edge of detection, "
        f"{sum(f['kind'] == 'inconsistent' for f in result['flips'])} inconsistent. {result['b_outside_a']} of "
        f"{names[1]}'s estimates lie outside {names[0]}'s intervals (two calibrated runs: about one in six, "
        "as each estimate carries its own noise).",
        "",
    ]
    if result["flips"]:
        lines += [f"| protocol | variant | metric | {names[0]} | {names[1]} | flip |", "|---|---|---|---|---|---|"]
        for f in result["flips"]:
            cell = lambda r: f"{r['delta']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] {r['verdict']}"  # noqa: E731
            lines.append(
                f"| {f['protocol']} | {f['variant']} | {f['metric']} | {cell(f['a'])} | {cell(f['b'])} | {f['kind']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--names", nargs=2, default=("run A", "run B"))
    ap.add_argument("--out", type=Path, default=Path("build/verdict_agreement"))
    args = ap.parse_args()
    result = compare(*(json.loads(p.read_text())["rows"] for p in (args.a, args.b)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"names": list(args.names), **result}, indent=1) + "\n")
    text = markdown(result, tuple(args.names))
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
