"""Benchmark 8: metanetwork editors for three requirements (weight pruning, data minimisation, bias
mitigation) against post-processing, fine-tuning and retraining, on the same held-out MLPs of a tabular
population (UCI Adult or German credit); then the composition "minimise data, then mitigate bias".

For every held-out network and method: test accuracy, the requirement's exact level, and the time to
produce the edited network (metanetwork: one forward pass, and per network within one batched pass).
Writes ``table.md``, ``results.json`` and ``pareto_<requirement>.png`` to ``--out``.

    python benchmarks/metanet_requirements.py [--dataset adult] [--models 64] [--epochs 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch

from lightning_edit.data import AdultDataModule, GermanCreditDataModule
from lightning_edit.metanet import MetanetworkEditor, ModelZooDataModule, compose, measure
from lightning_edit.metanet.baselines import (
    drop_inputs,
    finetune,
    fit_group_thresholds,
    magnitude_prune,
    pareto_plot,
    results_table,
    retrain,
    select_inputs_by_norm,
)
from lightning_edit.metanet.requirements import BiasMitigation, DataMinimisation, WeightPruning

SETTINGS = {  # requirement: (arguments, requirement weight of the metanetwork loss)
    "weight_pruning": ({"sparsity": 0.6}, 10.0),
    "data_minimisation": ({"k": 4, "unit": "attribute"}, 10.0),
    "bias_mitigation": ({"metric": "equalized_odds"}, 0.1),
}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, 1000 * (time.perf_counter() - t0)


def summarise(method: str, rows: list[dict], ms: list[float] | None) -> dict:
    return {"method": method, "accuracy": statistics.mean(r["accuracy"] for r in rows),
            "level": statistics.mean(r["level"] for r in rows), "ms_per_edit": statistics.median(ms) if ms else None,
            "accuracies": [r["accuracy"] for r in rows], "levels": [r["level"] for r in rows], "per_network": rows}


def train_editor(name: str, zoo, epochs: int) -> tuple[MetanetworkEditor, float]:
    args, weight = SETTINGS[name]
    L.seed_everything(0, verbose=False)
    editor = MetanetworkEditor(name, args, requirement_weight=weight)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=epochs)
    _, ms = timed(lambda: trainer.fit(editor, zoo))
    return editor.eval(), ms / 1000


def run_requirement(name: str, editor: MetanetworkEditor, zoo, ft_weight: float) -> list[dict]:
    req = editor.requirement
    data = zoo.data
    (xt, yt, st), (xv, yv, sv), (xs, ys, ss) = data.train_set.tensors, data.val_set.tensors, data.test_set.tensors
    models = [zoo.models[i] for i in zoo.test_idx]
    results = {m: [] for m in ("original", "metanetwork", "post-processing", "fine-tune", "retrain")}
    times = {m: [] for m in results if m != "original"}
    for i, model in zip(zoo.test_idx, models):
        results["original"].append(measure(req, model, xs, ys, ss))
        edited, ms = timed(lambda: editor.edit(model))
        times["metanetwork"].append(ms)
        results["metanetwork"].append(measure(req, edited, xs, ys, ss))
        masks = None
        if isinstance(req, WeightPruning):
            (post, masks), ms = timed(lambda: magnitude_prune(model, req.sparsity))
            results["post-processing"].append(measure(req, post, xs, ys, ss))
        elif isinstance(req, DataMinimisation):
            (post, masks), ms = timed(lambda: drop_inputs(model, select_inputs_by_norm(model, req)))
            results["post-processing"].append(measure(req, post, xs, ys, ss))
        else:
            target = measure(req, edited, xv, yv, sv)["level"]  # the metanetwork's level, on validation data
            clf, ms = timed(lambda: fit_group_thresholds(model, xv, yv, sv, req, target))
            with torch.no_grad():
                row = req.measure(lambda inp: clf(inp, ss), {}, [], xs, ys, ss)
                row["accuracy"] = (clf(xs, ss).argmax(-1) == ys).float().mean()
            results["post-processing"].append({k: float(v) for k, v in row.items()})
        times["post-processing"].append(ms)
        base_ms = ms if masks is not None else 0.0
        batch = 1024 if isinstance(req, BiasMitigation) else 256
        tuned, ms = timed(lambda: finetune(post if masks is not None else model, xt, yt, st, req, masks, epochs=1,
                                           weight=ft_weight, batch_size=batch))
        times["fine-tune"].append(base_ms + ms)
        results["fine-tune"].append(measure(req, tuned, xs, ys, ss))
        fresh, ms = timed(lambda: retrain(model, xt, yt, st, req, masks, epochs=zoo.configs[i]["epochs"], weight=ft_weight,
                                          batch_size=batch))
        times["retrain"].append(base_ms + ms)
        results["retrain"].append(measure(req, fresh, xs, ys, ss))
    _, ms = timed(lambda: editor.edit(models))
    rows = [summarise(m, results[m], times.get(m)) for m in results]
    rows.insert(2, {**summarise("metanetwork (batched)", results["metanetwork"], [ms / len(models)]), "time_only": True})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=["adult", "german"], default="adult")
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--requirements", default=",".join(SETTINGS))
    ap.add_argument("--ft-weight", type=float, default=1.0, help="requirement weight of the fine-tune/retrain losses")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "lightning_edit" / "zoo"),
                    help="where the trained population is cached (outside the repository)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out or f"runs/metanet_requirements_{args.dataset}")
    if args.dataset == "adult":
        zoo = ModelZooDataModule(num_models=args.models, data=AdultDataModule(), root=args.cache)
    else:
        zoo = ModelZooDataModule(num_models=args.models, data=GermanCreditDataModule(), epochs=[20, 30, 40],
                                 root=args.cache)
    zoo.setup()
    print(f"{args.dataset}: {len(zoo.train_idx)} training / {len(zoo.test_idx)} held-out networks, "
          f"{zoo.data.num_features} input features")
    report, editors = [f"# Metanetwork editors on {args.dataset} ({len(zoo.test_idx)} held-out networks)\n"], {}
    summary = {}
    for name in args.requirements.split(","):
        editor, seconds = train_editor(name, zoo, args.epochs)
        editors[name] = editor
        rows = run_requirement(name, editor, zoo, args.ft_weight)
        level = editor.requirement.level_name
        table = results_table(rows, level)
        title = f"{name} {SETTINGS[name][0]} on {args.dataset}; metanetwork trained {seconds:.0f} s"
        print(f"\n## {title}\n{table}")
        report.append(f"## {title}\n\n{table}\n")
        pareto_plot(rows, out / f"pareto_{name}.png", level, title)
        summary[name] = [{k: v for k, v in r.items() if k != "per_network"} for r in rows]
    if {"data_minimisation", "bias_mitigation"} <= editors.keys():
        report.append(composition(zoo, editors))
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(report))
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {out}/table.md, results.json, pareto_*.png")


def composition(zoo, editors) -> str:
    minimise, fair = editors["data_minimisation"], editors["bias_mitigation"]
    xs, ys, ss = zoo.data.test_set.tensors
    chains = {
        "original": lambda m: m,
        "minimise": lambda m: minimise.edit(m),
        "mitigate bias": lambda m: fair.edit(m),
        "minimise → mitigate (zeros kept)": lambda m: compose(m, [minimise, fair], keep_zeros=True),
        "minimise → mitigate (zeros not kept)": lambda m: compose(m, [minimise, fair], keep_zeros=False),
        "mitigate → minimise": lambda m: compose(m, [fair, minimise]),
    }
    lines = ["## Composition: data minimisation (k=4 attributes) and bias mitigation (equalized odds)\n",
             "| chain | test accuracy (%) | attributes used | dropped-input influence | EO difference | DP difference |",
             "|---|---|---|---|---|---|"]
    for label, chain in chains.items():
        rows = []
        for i in zoo.test_idx:
            edited = chain(zoo.models[i])
            a, b = measure(minimise.requirement, edited, xs, ys, ss), measure(fair.requirement, edited, xs, ys, ss)
            rows.append((a["accuracy"], a["units_used"], a["dropped_influence"], b["eo_difference"], b["dp_difference"]))
        m = [statistics.mean(c) for c in zip(*rows)]
        lines.append(f"| {label} | {100 * m[0]:.2f} | {m[1]:.1f} | {max(r[2] for r in rows):.2g} | {m[3]:.3f} | {m[4]:.3f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    return text


if __name__ == "__main__":
    main()
