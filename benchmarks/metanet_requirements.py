"""Benchmark 8: metanetwork editors against post-processing, fine-tuning and retraining, every requirement at
three levels, on held-out networks of a population of MLPs trained on a tabular dataset (UCI Adult or German
credit); then the per-network speed of one-pass editing at batch sizes 1, 8 and 64, and a composition.

Population (Adult): ``--models`` MLPs with 1-3 hidden layers of 16-128 units, ReLU / tanh / GELU, 1-3 epochs.
Networks with 3 hidden layers or a 128-unit layer are *held-out architectures*: never trained on, reported
separately. The rest is split into train / val / test networks. One metanetwork is trained per requirement and
level (``--epochs``), with the same seed. Every method is scored on the same held-out networks, on all test rows:

* weight pruning (60 / 80 / 90%): the metanetwork with straight-through top-k gates, the mask-aware round and a
  per-layer floor (defaults; ``--layer-floor f`` keeps at least ``f · (1 - sparsity)`` of every layer, 0: none),
  the same with the paper's soft gates (``--soft-levels``), global magnitude pruning, magnitude pruning + 1
  fine-tuning epoch (masks held), retraining under the masks;
* data minimisation (keep 2 / 4 / 8 of 14 attributes): metanetwork, dropping the inputs with the smallest
  first-layer norm, that + 1 fine-tuning epoch, retraining;
* bias mitigation (equalized odds, Lagrangian targets on the surrogate gap): metanetwork, one re-tuned decision
  threshold (no sensitive attribute at prediction time, like the metanetwork), per-group thresholds (needs it),
  both set on validation rows to reach the metanetwork's own validation level; 1 fine-tuning epoch and
  retraining with the fairness penalty.

``--dataset digits-cnn`` goes past the paper: a population of small CNNs (2-3 conv layers of 8-32 channels,
3×3 kernels, global pooling, a linear classifier; a 32-channel layer is a held-out architecture) trained 15-45
epochs (Adam lr 1e-2, batch 64) on the 8×8 digits, and weight pruning only.
The metanetwork removes whole kernels (an edge of the neural graph is a 3×3 kernel); magnitude pruning
removes single weights, kernel-norm pruning whole kernels (by RMS), at the same weight sparsity.

Mean ± std over held-out networks. Writes ``table.md``, ``results.json`` and ``pareto_<requirement>.png``.

    python benchmarks/metanet_requirements.py [--dataset adult|german|digits-cnn] [--models 512] [--epochs 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch

from lightning_edit.data import AdultDataModule, DigitsDataModule, GermanCreditDataModule
from lightning_edit.metanet import MetanetworkEditor, ModelZooDataModule, compose, measure
from lightning_edit.metanet.population import split_tensors
from lightning_edit.metanet.baselines import (
    drop_inputs,
    finetune,
    fit_group_thresholds,
    fit_single_threshold,
    magnitude_prune,
    retrain,
    select_inputs_by_norm,
)
from lightning_edit.metanet.requirements import BiasMitigation, DataMinimisation, WeightPruning

from _common import RESULTS, set_threads

LEVELS = {  # requirement -> [(requirement arguments, editor arguments)]
    "weight_pruning": [({"sparsity": s}, {}) for s in (0.6, 0.8, 0.9)],
    "data_minimisation": [({"k": k, "unit": "attribute"}, {}) for k in (8, 4, 2)],
    "bias_mitigation": [({"metric": "equalized_odds", "target": t}, {"constraint": "lagrangian", "requirement_weight": 0.1})
                        for t in (0.08, 0.04, 0.02)],
}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, 1000 * (time.perf_counter() - t0)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def train_editor(name: str, req_args: dict, editor_args: dict, zoo, epochs: int, seed: int = 0) -> tuple[MetanetworkEditor, float]:
    L.seed_everything(seed, verbose=False)
    editor = MetanetworkEditor(name, req_args, kernel_size=zoo.max_kernel, **editor_args)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    _, ms = timed(lambda: trainer.fit(editor, zoo))
    return editor.eval(), ms / 1000


def threshold_row(clf, req, xs, ys, ss, uses_s: bool) -> dict:
    with torch.no_grad():
        forward = (lambda inp: clf(inp, ss)) if uses_s else clf
        row = req.measure(forward, {}, [], xs, ys, ss)
        row["accuracy"] = (forward(xs).argmax(-1) == ys).float().mean()
    return {k: float(v) for k, v in row.items()}


def score(editor: MetanetworkEditor, zoo, indices: list[int], ft_weight: float, baselines: bool) -> dict[str, list[dict]]:
    """Per method, one row per network of ``indices``: accuracy, level, ms."""
    req, data = editor.requirement, zoo.data
    (xt, yt, st), (xv, yv, sv), (xs, ys, ss) = (split_tensors(d) for d in (data.train_set, data.val_set, data.test_set))
    out: dict[str, list[dict]] = {}

    def add(method, row, ms):
        out.setdefault(method, []).append({**row, "ms": ms})

    for i in indices:
        model = zoo.models[i]
        add("original", measure(req, model, xs, ys, ss), None)
        edited, ms = timed(lambda: editor.edit(model))
        add("metanetwork", measure(req, edited, xs, ys, ss), ms)
        if not baselines:
            continue
        masks, post, pre_ms = None, None, 0.0
        if isinstance(req, WeightPruning):
            (post, masks), pre_ms = timed(lambda: magnitude_prune(model, req.sparsity))
            add("magnitude pruning", measure(req, post, xs, ys, ss), pre_ms)
            if req.min_layer_density > 0:  # the editor's budget rule: the same per-layer floor
                floored, ms = timed(lambda: magnitude_prune(model, req.sparsity, min_layer_density=req.min_layer_density)[0])
                add("magnitude pruning (layer floor)", measure(req, floored, xs, ys, ss), ms)
            if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):  # the editor's granularity: whole kernels
                (kernels, _), ms = timed(lambda: magnitude_prune(model, req.sparsity, granularity="kernel"))
                add("kernel-norm pruning", measure(req, kernels, xs, ys, ss), ms)
        elif isinstance(req, DataMinimisation):
            (post, masks), pre_ms = timed(lambda: drop_inputs(model, select_inputs_by_norm(model, req)))
            add("drop smallest-norm inputs", measure(req, post, xs, ys, ss), pre_ms)
        else:
            target = measure(req, edited, xv, yv, sv)["level"]  # the metanetwork's own level, on validation rows
            clf, ms = timed(lambda: fit_single_threshold(model, xv, yv, sv, req, target))
            add("one threshold (no s at prediction)", threshold_row(clf, req, xs, ys, ss, False), ms)
            clf, ms = timed(lambda: fit_group_thresholds(model, xv, yv, sv, req, target))
            add("group thresholds (needs s)", threshold_row(clf, req, xs, ys, ss, True), ms)
        batch = 1024 if isinstance(req, BiasMitigation) else 256
        tuned, ms = timed(lambda: finetune(post if masks is not None else model, xt, yt, st, req, masks, epochs=1,
                                           weight=ft_weight, batch_size=batch))
        add("+ 1 fine-tuning epoch" if masks is not None else "fine-tune 1 epoch (penalty)", measure(req, tuned, xs, ys, ss),
            pre_ms + ms)
        fresh, ms = timed(lambda: retrain(model, xt, yt, st, req, masks, epochs=zoo.configs[i]["epochs"], weight=ft_weight,
                                          batch_size=batch))
        add("retrain", measure(req, fresh, xs, ys, ss), pre_ms + ms)
    return out


def summarise(rows: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for method, rs in rows.items():
        acc, acc_std = mean_std([r["accuracy"] for r in rs])
        level, level_std = mean_std([r["level"] for r in rs])
        ms = [r["ms"] for r in rs if r["ms"] is not None]
        summary[method] = {"accuracy": acc, "accuracy_std": acc_std, "level": level, "level_std": level_std,
                           "ms_median": statistics.median(ms) if ms else None, "networks": len(rs)}
    return summary


def fmt(s: dict, level_name: str) -> str:
    ms = "" if s["ms_median"] is None else f" · {s['ms_median']:.1f} ms"
    return f"{100 * s['accuracy']:.2f} ± {100 * s['accuracy_std']:.2f} ({level_name} {s['level']:.3f}){ms}"


def speed(editor: MetanetworkEditor, zoo, ft_weight: float) -> dict:
    """Per-network time to edit the same 64 networks (test, held-out-architecture and val networks) in batches of
    1, 8 and 64, against 1 fine-tuning epoch and retraining of those networks, side by side (editor: median of 3
    repeats). The compute does not depend on the editor's trained weights."""
    pool = (zoo.test_idx + zoo.heldout_arch_idx + zoo.val_idx)[:64]
    models = [zoo.models[i] for i in pool]
    req, (xt, yt, st) = editor.requirement, split_tensors(zoo.data.train_set)
    result = {}
    for n in (1, 8, 64):
        for label, budget in (("", 65536), (" (one pass)", None)):
            if n == 1 and budget is None:
                continue

            def run(n=n, budget=budget):
                for k in range(0, len(models), n):
                    editor.edit(models[k : k + n], edges_per_pass=budget)

            run()  # warm-up
            result[f"metanetwork, batch {n}{label}"] = statistics.median(timed(run)[1] for _ in range(3)) / len(models)
    ft = [timed(lambda m=m: finetune(m, xt, yt, st, req, None, epochs=1, weight=ft_weight))[1] for m in models[:16]]
    rt = [timed(lambda m=m, i=i: retrain(m, xt, yt, st, req, None, epochs=zoo.configs[i]["epochs"], weight=ft_weight))[1]
          for m, i in zip(models[:8], pool[:8])]
    result["fine-tuning epoch"], result["retraining"] = statistics.median(ft), statistics.median(rt)
    edges = [sum(p.numel() for n_, p in m.named_parameters() if n_.endswith("weight")) for m in models]
    result["mean edges per network"] = statistics.mean(edges)
    return result


def pareto(summaries: dict[str, list[tuple[dict, dict]]], path: Path, level_name: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = {m for _, s in summaries for m in s if m != "original"}
    for k, method in enumerate(sorted(methods)):
        pts = sorted((s[method]["level"], 100 * s[method]["accuracy"], 100 * s[method]["accuracy_std"])
                     for _, s in summaries if method in s)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=method, color=f"C{k}")
    orig = summaries[0][1]["original"]
    ax.axhline(100 * orig["accuracy"], color="k", ls=":", label="original")
    ax.set_xlabel(level_name)
    ax.set_ylabel("test accuracy (%), held-out networks")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=["adult", "german", "digits-cnn"], default="adult",
                    help="digits-cnn: a population of small CNNs on the 8x8 digits, weight pruning only")
    ap.add_argument("--models", type=int, default=None, help="population size (default 512; 256 for digits-cnn)")
    ap.add_argument("--epochs", type=int, default=15, help="metanetwork training epochs (passes over the train networks)")
    ap.add_argument("--requirements", default=",".join(LEVELS))
    ap.add_argument("--soft-levels", type=float, nargs="*", default=[0.8, 0.9],
                    help="pruning sparsities at which the soft-gate metanetwork (paper) is also trained")
    ap.add_argument("--layer-floor", type=float, default=None,
                    help="weight pruning: every layer keeps at least this fraction of the surviving density 1 - sparsity "
                         "(min_layer_density = layer_floor * (1 - sparsity)); 0 = the paper's global top-k; "
                         "default: the requirement's default (0.5)")
    ap.add_argument("--heldout-arch-networks", type=int, default=40, help="held-out-architecture networks scored")
    ap.add_argument("--ft-weight", type=float, default=1.0, help="requirement weight of the fine-tune/retrain losses")
    ap.add_argument("--speed-only", action="store_true",
                    help="only the speed section, with an untrained weight-pruning editor of the same size (its compute "
                         "does not depend on its weights); merged into an existing results.json")
    ap.add_argument("--editor", type=json.loads, default={},
                    help='extra MetanetworkEditor arguments for every editor, JSON, e.g. \'{"hidden": 16, "gate_prior": "magnitude"}\'')
    ap.add_argument("--data-batch", type=int, default=None,
                    help="data rows per editor training step, every requirement (default: 8192 for bias mitigation on "
                         "adult, 1024 for its other requirements, 256 otherwise); the fine-tuning and retraining "
                         "baselines keep their own batch sizes")
    ap.add_argument("--seed", type=int, default=0, help="seed of the editors' initialisation and training order")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "lightning_edit" / "zoo"),
                    help="where the trained population is cached (outside the repository)")
    args = ap.parse_args()
    if args.dataset == "digits-cnn":
        args.requirements, args.soft_levels = "weight_pruning", []
    args.models = args.models or (256 if args.dataset == "digits-cnn" else 512)
    set_threads()
    out = Path(args.out or RESULTS / f"metanet_requirements_{args.dataset}")
    if args.dataset == "adult":
        zoo = ModelZooDataModule(num_models=args.models, widths=[16, 32, 64, 128], depths=[1, 2, 3], epochs=[1, 2, 3],
                                 activations=["relu", "tanh", "gelu"], heldout_widths=[128], heldout_depths=[3],
                                 data=AdultDataModule(batch_size=1024), root=args.cache)
    elif args.dataset == "digits-cnn":  # conv widths 8-24 seen, 32 held out; 2-3 conv layers
        zoo = ModelZooDataModule(num_models=args.models, family="cnn", widths=[8, 12, 16, 24, 32], depths=[2, 3],
                                 epochs=[15, 30, 45], activations=["relu", "tanh", "gelu"], heldout_widths=[32],
                                 train_lr=1e-2, train_batch_size=64, data=DigitsDataModule(batch_size=256), root=args.cache)
    else:
        zoo = ModelZooDataModule(num_models=args.models, widths=[16, 32, 64, 128], depths=[1, 2, 3], epochs=[20, 30, 40],
                                 activations=["relu", "tanh", "gelu"], heldout_widths=[128], heldout_depths=[3],
                                 data=GermanCreditDataModule(batch_size=256), root=args.cache)
    _, build_ms = timed(zoo.setup)
    heldout_arch = zoo.heldout_arch_idx[: args.heldout_arch_networks]
    print(f"{args.dataset}: {len(zoo.train_idx)} train / {len(zoo.val_idx)} val / {len(zoo.test_idx)} test networks, "
          f"{len(zoo.heldout_arch_idx)} of held-out architectures ({len(heldout_arch)} scored); population ready in "
          f"{build_ms / 1000:.0f} s")
    if args.speed_only:
        editor = MetanetworkEditor("weight_pruning", LEVELS["weight_pruning"][0][0], kernel_size=zoo.max_kernel, **args.editor)
        editor.requirement.setup(zoo.data)
        results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
        results["speed_ms_per_network"] = speed(editor.eval(), zoo, args.ft_weight)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        print(json.dumps(results["speed_ms_per_network"], indent=1))
        return
    results: dict = {"settings": vars(args), "population": {
        "train": len(zoo.train_idx), "val": len(zoo.val_idx), "test": len(zoo.test_idx),
        "heldout_architectures": len(zoo.heldout_arch_idx), "heldout_architectures_scored": len(heldout_arch)}}
    report = [f"# Metanetwork editors on {args.dataset}\n", f"Population: {results['population']}\n"]

    def write():
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "table.md").write_text("\n".join(report))

    editors, default_batch = {}, zoo.data.batch_size
    for name in args.requirements.split(","):
        # The fairness surrogate is a max of noisy group rates: 1,024 rows (about 30 positives of the smaller
        # group) bias it upwards and the editor over-corrects (README); 8,192 rows hold about 240.
        big = name == "bias_mitigation" and args.dataset == "adult"
        zoo.data.batch_size = args.data_batch or (8192 if big else default_batch)
        arms = [(r, {**e, **args.editor}, "") for r, e in LEVELS[name]]
        if name == "weight_pruning" and args.layer_floor is not None:
            arms = [({**r, "min_layer_density": round(args.layer_floor * (1 - r["sparsity"]), 6)}, e, t) for r, e, t in arms]
        if name == "weight_pruning":
            arms += [({"sparsity": s, "gates": "soft"}, {**args.editor, "gate_conditioned": False}, "soft") for s in args.soft_levels]
        level_name, summaries = None, []
        report.append(f"## {name}\n")
        for req_args, editor_args, tag in arms:
            editor, seconds = train_editor(name, req_args, editor_args, zoo, args.epochs, args.seed)
            editors.setdefault(name, editor)
            level_name = editor.requirement.level_name
            test = summarise(score(editor, zoo, zoo.test_idx, args.ft_weight, baselines=not tag))
            arch = summarise(score(editor, zoo, heldout_arch, args.ft_weight, baselines=not tag))
            key = f"{name} {req_args}" + (f" {editor_args}" if editor_args else "")
            if tag:  # the soft-gate ablation: metanetwork rows only, named apart
                test = {f"metanetwork (soft gates, paper)": test["metanetwork"]}
                arch = {f"metanetwork (soft gates, paper)": arch["metanetwork"]}
                base = next(s for a, s in summaries if a.get("sparsity") == req_args["sparsity"] and "gates" not in a)
                base.update(test)
            else:
                summaries.append((req_args, test))
            results[key] = {"train_seconds": seconds, "data_batch": zoo.data.batch_size, "test_networks": test,
                            "heldout_architectures": arch}
            lines = [f"### {key}; metanetwork trained {seconds:.0f} s on {zoo.data.batch_size} data rows per step\n",
                     "| method | test networks | held-out architectures |", "|---|---|---|"]
            for method in test:
                lines.append(f"| {method} | {fmt(test[method], level_name)} | "
                             f"{fmt(arch[method], level_name) if method in arch else '–'} |")
            print("\n".join(lines), flush=True)
            report.append("\n".join(lines) + "\n")
            write()
        pareto(summaries, out / f"pareto_{name}.png", level_name, f"{name} on {args.dataset}: test networks")
    if "weight_pruning" in editors:
        s = speed(editors["weight_pruning"], zoo, args.ft_weight)
        results["speed_ms_per_network"] = s
        lines = ["## Speed (weight pruning editor, ms per network, 2 CPU threads)\n", "| what | ms per network | ÷ fine-tuning epoch |",
                 "|---|---|---|"]
        for k, v in s.items():
            if k != "mean edges per network":
                lines.append(f"| {k} | {v:.2f} | {v / s['fine-tuning epoch']:.3f} |")
        lines.append(f"\nMean edges per network: {s['mean edges per network']:.0f}")
        print("\n".join(lines))
        report.append("\n".join(lines) + "\n")
    if {"data_minimisation", "bias_mitigation"} <= editors.keys():
        report.append(composition(zoo, editors))
    write()
    print(f"\nwrote {out}/table.md, results.json, pareto_*.png")


def composition(zoo, editors) -> str:
    minimise, fair = editors["data_minimisation"], editors["bias_mitigation"]
    xs, ys, ss = zoo.data.test_set.tensors
    chains = {
        "original": lambda m: m,
        "minimise": lambda m: minimise.edit(m),
        "mitigate bias": lambda m: fair.edit(m),
        "minimise → mitigate (zeros kept)": lambda m: compose(m, [minimise, fair], keep_zeros=True),
        "mitigate → minimise": lambda m: compose(m, [fair, minimise]),
    }
    lines = [f"## Composition: data minimisation ({minimise.requirement.arguments()}) and bias mitigation "
             f"({fair.requirement.arguments()})\n",
             "| chain | test accuracy (%) | attributes used | EO difference |", "|---|---|---|---|"]
    for label, chain in chains.items():
        rows = []
        for i in zoo.test_idx:
            edited = chain(zoo.models[i])
            a, b = measure(minimise.requirement, edited, xs, ys, ss), measure(fair.requirement, edited, xs, ys, ss)
            rows.append((a["accuracy"], a["units_used"], b["eo_difference"]))
        m = [statistics.mean(c) for c in zip(*rows)]
        lines.append(f"| {label} | {100 * m[0]:.2f} | {m[1]:.1f} | {m[2]:.3f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    return text


if __name__ == "__main__":
    main()
