"""Mean ± std over editor seeds of `metanet_requirements.py` runs.

Each input directory holds the `results.json` of one run of the same benchmark with a different `--seed`
(same population, same levels). For every level, split and method this prints the mean over seeds of the
per-run mean accuracy (%) and requirement level, ± their std over seeds, and writes `table.md` and
`results.json` to `--out`. The editor seed moves the metanetwork and the threshold baselines (their thresholds
are fit to the metanetwork's own validation level); fine-tuning and retraining do not depend on it, so their
std over seeds is 0.

    python benchmarks/diagnostics/metanet_seed_summary.py benchmarks/results/metanet_fairness_adult_lagrangian_b8192 \
        benchmarks/results/metanet_fairness_adult_lagrangian_b8192_seed1 \
        benchmarks/results/metanet_fairness_adult_lagrangian_b8192_seed2 \
        --out benchmarks/results/metanet_fairness_adult_lagrangian_b8192_seeds
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

SPLITS = ("test_networks", "heldout_architectures")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> dict:
    """Per level key, split and method: mean and std over runs of accuracy and level."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], dict) and "test_networks" in runs[0][k]]
    for run in runs[1:]:
        missing = [k for k in keys if k not in run]
        if missing:
            raise ValueError(f"runs do not hold the same levels; missing {missing}: rerun with the same --requirements")
    out: dict = {}
    for key in keys:
        out[key] = {}
        for split in SPLITS:
            out[key][split] = {}
            for method in runs[0][key][split]:
                acc = [r[key][split][method]["accuracy"] for r in runs]
                lvl = [r[key][split][method]["level"] for r in runs]
                (am, asd), (lm, lsd) = _mean_std(acc), _mean_std(lvl)
                out[key][split][method] = {"accuracy": am, "accuracy_std_over_seeds": asd, "level": lm,
                                           "level_std_over_seeds": lsd, "seeds": len(runs)}
    return out


def table(summary: dict, seeds: int) -> str:
    lines = [f"# Mean ± std over {seeds} editor seeds (accuracy %, level)", ""]
    for key, splits in summary.items():
        lines += [f"## {key}", "", "| method | test networks | held-out architectures |", "|---|---|---|"]
        for method in splits[SPLITS[0]]:
            cells = []
            for split in SPLITS:
                m = splits[split][method]
                cells.append(f"{100 * m['accuracy']:.2f} ± {100 * m['accuracy_std_over_seeds']:.2f} "
                             f"({m['level']:.3f} ± {m['level_std_over_seeds']:.3f})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="result directories of metanet_requirements.py, one per seed")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in args.runs]
    summary = summarise(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(summary, len(runs))
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"runs": args.runs, "summary": summary}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
