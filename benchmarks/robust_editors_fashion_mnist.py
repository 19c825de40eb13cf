"""Benchmark 6: editors at their defaults with retain data, beside the tuned and published variants, under Brown et
al.'s edit protocol, on Fashion-MNIST.

One network (``--arch vgg11``: VGG-11 ¼; ``resnet20``) trained once. Edit set: 32 misclassified validation shirts
(class 6), drawn with each of ``--seeds`` seeds from the pool of misclassified validation shirts. Held-out set of the
same kind: every misclassified test shirt (disjoint from the edit sets). Retain data: the first 2,048 training images
(16 batches). Training-side check (what a user can measure without the test set, and what the default budget was
chosen on): the collateral shift and the accuracy change on training images 2,048–6,143 (never seen by an editor).

Main arms: every editor built by name with ``retain=`` and nothing else (the constrained edit at ``budget="auto"``;
the 16 retain batches are all ``retain_limit`` reads, so ``FineTuneEditor``'s ``adversarial_eps="auto"`` has no
held-out data and makes the clean-retain edit), and ``FineTuneEditor`` at its defaults given held-out data as well
(``select=`` training images 6,144–7,167, disjoint from every other set here): it makes the clean and the aimed edit
and keeps the one with the higher held-out PGD accuracy. Extra rows: the
fixed-penalty edit (``budget=None``, the defaults before constrained editing), the tuned fixed-penalty row of the
earlier benchmark (Adam lr 1e-4, 300 steps), the published editor without retain data, ``--budgets`` (fine-tune all
on clean retain data at other budgets: the budget choice) and ``--extra`` (fine-tune all with other arguments, e.g.
``'{"adversarial_eps": 0.03}'``, adversarial retain examples aimed at the edit's labels). ``--arms REGEX`` runs only the
matching arms; with ``--reuse DIR`` the others are read from an earlier run of the same model and edit sets.
Training-side ΔPGD: PGD accuracy change on training images 2,048–3,071 (what ``ADVERSARIAL_EPS`` was chosen on).
Measured on the first ``--test-images`` test images: edit success, held-out accuracy, Δclean, collateral shift
(non-shirt images that moved to "shirt"), ΔPGD (L∞, ε in pixel units), Δ of each corruption, PGD on the edited
examples, ms per edit. Mean ± std over the seeds; ``results.json``, ``table.md`` and ``robust_editors.png`` (Δclean vs
edit success) are written to ``--out``.

    python benchmarks/robust_editors_fashion_mnist.py [--arch vgg11|resnet20] [--seeds 3] [--budgets 0.01 0.03]
        [--extra '{"adversarial_eps": 0.03}'] [--arms REGEX --reuse DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from _common import RESULTS, datamodule, set_threads, vgg

from lightning_edit import ClassifierModule
from lightning_edit.models import resnet20
from lightning_edit.robust import (
    FineTuneEditor,
    InterpolationEditor,
    LowRankEditor,
    collateral_shift,
    pgd_attack,
    report_change,
    robustness_report,
)

LAYERS = {"vgg11": "features.25", "resnet20": "layer3.2.conv2"}  # the last conv layer
COLUMNS = ["edit_success", "held_out", "clean", "collateral_shift", "train_shift", "train_clean", "train_pgd", "pgd",
           "corruption/gaussian_noise", "corruption/blur", "corruption/contrast", "edit_pgd", "ms"]
DEFAULTS = " (defaults)"
SELECT = "training images 6,144–7,167"


def editors(retain, layer: str, budgets: list[float], extra: list[dict], select):
    """Main arms (every editor at its defaults, given retain data), then the extra rows."""
    arms = {
        f"fine-tune all{DEFAULTS}": FineTuneEditor(retain=retain),
        f"fine-tune all, held-out select={SELECT}{DEFAULTS}": FineTuneEditor(retain=retain, select=select),
        f"fine-tune last conv{DEFAULTS}": FineTuneEditor([layer], retain=retain),
        f"1-LI last conv{DEFAULTS}": InterpolationEditor(layer, retain=retain),
        f"rank-1 last conv{DEFAULTS}": LowRankEditor(layer, retain=retain),
        "fine-tune all, fixed penalty (budget=None)": FineTuneEditor(retain=retain, budget=None, adversarial_eps=0.0),
        "fine-tune all, fixed penalty, tuned (lr 1e-4, 300 steps)": FineTuneEditor(lr=1e-4, max_steps=300, retain=retain,
                                                                                   budget=None, adversarial_eps=0.0),
        "fine-tune all, no retain (published)": FineTuneEditor(locality_coef=0.0),
    }
    for b in budgets:  # the budget of the clean-retain edit
        arms[f"fine-tune all, budget={b}"] = FineTuneEditor(retain=retain, budget=b, adversarial_eps=0.0)
    for kwargs in extra:
        arms["fine-tune all, " + ", ".join(f"{k}={v}" for k, v in kwargs.items())] = FineTuneEditor(retain=retain, **kwargs)
    return arms


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--edits", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eps", type=float, default=0.03)
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--edit-class", type=int, default=6)
    ap.add_argument("--arch", choices=sorted(LAYERS), default="vgg11")
    ap.add_argument("--budgets", type=float, nargs="*", default=[], help="extra fine-tune-all rows at these budgets")
    ap.add_argument("--extra", type=json.loads, nargs="*", default=[],
                    help='extra fine-tune-all rows, each a JSON dict of FineTuneEditor arguments: \'{"budget": 0.01}\'')
    ap.add_argument("--arms", default=None, help="run only the arms whose name matches this regular expression")
    ap.add_argument("--reuse", default=None, metavar="DIR",
                    help="read the arms that --arms leaves out from DIR/results.json, an earlier run of the same model "
                         "and edit sets (checked: same settings, base accuracy and pool)")
    ap.add_argument("--out", default=None, help="default: results/robust_editors_defaults_<arch>")
    args = ap.parse_args()
    args.out = args.out or str(RESULTS / f"robust_editors_defaults_{args.arch}")
    set_threads()
    warnings.filterwarnings("ignore", message=".*nothing holds the rest of the model fixed.*")
    L.seed_everything(0, verbose=False)
    dm, side = datamodule(batch_size=128, train_subset=args.train_subset)
    dm.setup()
    net = vgg(side) if args.arch == "vgg11" else resnet20(in_channels=1, num_classes=10)
    module = ClassifierModule(net, optimizer=functools.partial(torch.optim.Adam, lr=2e-3))
    L.Trainer(max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, dm)
    model = module.model.eval()

    def misclassified(x, y):
        with torch.no_grad():
            wrong = (torch.cat([model(b).argmax(1) for b in x.split(1000)]) != y) & (y == args.edit_class)
        return x[wrong], y[wrong]

    pool_x, pool_y = misclassified(dm.val_set.x, dm.val_set.y)
    held_x, held_y = misclassified(dm.test_set.x, dm.test_set.y)
    retain = list(zip(dm.train_set.x[:2048].split(128), dm.train_set.y[:2048].split(128)))
    train_side = list(zip(dm.train_set.x[2048:6144].split(512), dm.train_set.y[2048:6144].split(512)))
    select = list(zip(dm.train_set.x[6144:7168].split(512), dm.train_set.y[6144:7168].split(512)))
    test = list(zip(dm.test_set.x[: args.test_images].split(500), dm.test_set.y[: args.test_images].split(500)))
    std = float(dm.std.mean())
    with torch.no_grad():
        base_acc = float(torch.cat([(model(x).argmax(1) == y) for x, y in test]).float().mean())
    print(f"trained model: test accuracy {base_acc:.4f} on {args.test_images} images; pool of {len(pool_x)} misclassified "
          f"validation shirts; held-out: {len(held_x)} misclassified test shirts; retain: 2,048 training images", flush=True)

    rows: dict[str, dict[str, list[float]]] = {}
    reused = reuse(args, base_acc, len(pool_x)) if args.reuse else {}
    original: dict[str, float] = {}
    for seed in range(args.seeds):
        pick = torch.randperm(len(pool_x), generator=torch.Generator().manual_seed(seed))[: args.edits]
        ex, ey = pool_x[pick], pool_y[pick]
        kw = dict(edit_x=ex, edit_y=ey, held_out_x=held_x, held_out_y=held_y, eps=args.eps, pgd_steps=args.pgd_steps,
                  input_std=std)
        original = robustness_report(model, test, **kw)
        train_pgd0 = pgd_accuracy(model, train_side[:2], args.eps, args.pgd_steps, std)
        for name, editor in editors(retain, LAYERS[args.arch], args.budgets, args.extra, select).items():
            if args.arms is not None and not re.search(args.arms, name):
                if name in reused:
                    for k, v in reused[name].items():
                        rows.setdefault(name, {}).setdefault(k, []).append(v[seed])
                continue
            t0 = time.perf_counter()
            edited, result = editor.edit(model, ex, ey)
            ms = 1000 * (time.perf_counter() - t0)
            after = robustness_report(edited, test, **kw)
            out = {"edited": after, "change": report_change(after, original),
                   "collateral_shift": collateral_shift(model, edited, test, args.edit_class)}
            train_clean = accuracy(edited, train_side) - accuracy(model, train_side)
            values = {"edit_success": out["edited"]["edit_success"], "held_out": out["edited"]["held_out"],
                      "collateral_shift": out["collateral_shift"], "edit_pgd": out["edited"]["edit_pgd"], "ms": ms,
                      "train_shift": collateral_shift(model, edited, train_side, args.edit_class),
                      "train_clean": train_clean, "steps": result.steps,
                      "train_pgd": pgd_accuracy(edited, train_side[:2], args.eps, args.pgd_steps, std) - train_pgd0}
            values.update({k: out["change"][k] for k in ("clean", "pgd", "corruption/gaussian_noise", "corruption/blur",
                                                          "corruption/contrast")})
            if getattr(editor, "selection", None) and "candidates" in editor.selection:
                values["aimed_chosen"] = float(editor.selection["adversarial_eps"] > 0)
                print(f"seed {seed} {name}: selection {editor.selection}", flush=True)
            for k, v in values.items():
                rows.setdefault(name, {}).setdefault(k, []).append(v)
            print(f"seed {seed} {name:<32} success {values['edit_success']:.2f} held-out {values['held_out']:.2f} "
                  f"Δclean {100 * values['clean']:+.1f} shift {100 * values['collateral_shift']:.1f}% "
                  f"ΔPGD {100 * values['pgd']:+.1f} train-side ΔPGD {100 * values['train_pgd']:+.1f} train-side shift {100 * values['train_shift']:.1f}% "
                  f"steps {result.steps} {ms:.0f} ms", flush=True)

        write(args, rows, original, base_acc, len(pool_x), len(held_x), final=seed == args.seeds - 1)


def reuse(args, base_acc: float, pool: int) -> dict[str, dict[str, list[float]]]:
    """The per-seed rows of an earlier run of the same model and edit sets (``--reuse``).

    Raises:
        ValueError: if its settings, base accuracy or pool differ (another model or other edit sets).
    """
    stored = json.loads((Path(args.reuse) / "results.json").read_text())
    same = ("epochs", "train_subset", "edits", "eps", "pgd_steps", "test_images", "edit_class", "arch")
    differ = [k for k in same if stored["settings"][k] != getattr(args, k)]
    if differ or stored["base_test_accuracy"] != base_acc or stored["pool"] != pool or stored["seeds_done"] < args.seeds:
        raise ValueError(f"--reuse {args.reuse} is not a run of this model and these edit sets (settings {differ}, "
                         f"base accuracy {stored['base_test_accuracy']} vs {base_acc}, pool {stored['pool']} vs {pool}, "
                         f"{stored['seeds_done']} seeds); rerun every arm instead.")
    if "relabelled" in stored["settings"]:
        args.relabelled = stored["settings"]["relabelled"]
    return stored["per_seed"]


def pgd_accuracy(model, batches, eps: float, steps: int, std: float) -> float:
    """PGD accuracy on ``batches`` (the training-side images: what a default may be chosen on)."""
    g = torch.Generator().manual_seed(0)
    right = [model(pgd_attack(model, x, y, eps, steps, input_std=std, generator=g)).argmax(1) == y for x, y in batches]
    return float(torch.cat(right).float().mean())


def accuracy(model, batches) -> float:
    with torch.no_grad():
        return float(torch.cat([model(x).argmax(1) == y for x, y in batches]).float().mean())


def meets(cols) -> bool:
    """The issue's bar, on the means: success ≥ 0.95, Δclean ≥ −1 point, shift ≤ 2%, ΔPGD ≥ −2 points."""
    return (cols["edit_success"][0] >= 0.95 and cols["clean"][0] >= -0.01 and cols["collateral_shift"][0] <= 0.02
            and cols["pgd"][0] >= -0.02)


def write(args, rows, original, base_acc: float, pool: int, held: int, final: bool) -> None:
    """Table, ``results.json`` and the plot of the seeds so far (rewritten after every edit set)."""
    summary = {name: {k: mean_std(v) for k, v in cols.items()} for name, cols in rows.items()}
    percent = ("clean", "pgd", "corruption/gaussian_noise", "corruption/blur", "corruption/contrast", "train_clean",
               "train_pgd")
    header = ["editor", "edit success", "held-out shirts", "Δclean", "collateral shift", "train-side shift",
              "train-side Δacc", "train-side ΔPGD", "ΔPGD", "Δnoise", "Δblur", "Δcontrast", "edit PGD", "ms/edit", "meets the bar"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.append("| original | 0.00 | " + f"{original.get('held_out', 0):.2f} | {100 * base_acc:.1f}% (acc) | — | — | — | "
                 f"— | {100 * original['pgd']:.1f}% (acc) | — | — | — | {original['edit_pgd']:.2f} | — | — |")
    for name, cols in summary.items():
        cells = []
        for k in COLUMNS:
            if k not in cols:  # a column an earlier (--reuse) run did not measure
                cells.append("—")
                continue
            m, s = cols[k]
            if k == "ms":
                cells.append(f"{m:.0f} ± {s:.0f}")
            elif k in ("collateral_shift", "train_shift"):
                cells.append(f"{100 * m:.1f}% ± {100 * s:.1f}")
            elif k in percent:
                cells.append(f"{100 * m:+.1f} ± {100 * s:.1f}")
            else:
                cells.append(f"{m:.2f} ± {s:.2f}")
        label = f"**{name}**" if name.endswith(DEFAULTS) else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'yes' if meets(cols) else 'no'} |")
    seeds = len(next(iter(rows.values()))["clean"])
    table = "\n".join(lines)
    if final:
        print("\n" + table)
        print(f"Δ columns: accuracy points (edited − original) on the test images; mean ± std over {seeds} edit sets of "
              f"{args.edits} shirts. Bold: the editor built by name with retain= and its defaults.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({
        "settings": vars(args), "base_test_accuracy": base_acc, "pool": pool, "held_out": held, "seeds_done": seeds,
        "original": original, "per_seed": rows,
        "summary": {n: {k: {"mean": m, "std": s} for k, (m, s) in c.items()} for n, c in summary.items()},
        "meets_the_bar": {n: meets(c) for n, c in summary.items()},
    }, indent=2))
    plot(summary, out / "robust_editors.png", args.arch)
    if final:
        print(f"written: {out}/table.md, results.json, robust_editors.png")


def plot(summary, path: Path, arch: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    for i, (name, cols) in enumerate(summary.items()):
        (sx, ex), (cy, ey) = cols["edit_success"], cols["clean"]
        ax.errorbar(sx, 100 * cy, xerr=ex, yerr=100 * ey, fmt="o" if name.endswith(DEFAULTS) else "x", ms=7,
                    label=name, color=f"C{i % 10}")
    ax.axhline(-1, color="grey", ls=":", lw=1)
    ax.axvline(0.95, color="grey", ls=":", lw=1)
    ax.set_xlabel("edit success (fraction of the 32 shirts fixed)")
    ax.set_ylabel("Δ clean test accuracy (points)")
    ax.set_title(f"Editors on Fashion-MNIST {arch}: o = defaults with retain data")
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
