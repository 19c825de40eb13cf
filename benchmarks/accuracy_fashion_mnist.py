"""Benchmark 3: test accuracy after pruning the same trained CNN on Fashion-MNIST to the same *parameter* sparsity,
DISCEDIT (both feature sites) against the criteria a user would pick instead, with no fine-tuning, after BatchNorm
recalibration, and (``--finetune``) after one fine-tuning epoch.

Arms (all through the same machinery: ``channel_scores`` -> ``prune_channels(sparsity_type="parameters")``):
DISCEDIT fisher witness at the conv output (the authors' pruning code) and after BN + ReLU; our filter L1; and
torch-pruning's group L2, first-order Taylor, BN scale and LAMP; random. Each in ``--scopes`` (per-layer budgets,
one global ranking; DISCEDIT and L1 scores divided by their layer mean there, as torch-pruning does for its own).
For each seed the network is trained anew (seed s) and the calibration sample (16 batches) and
the recalibration sample (20 batches) are drawn with seed s. Mean ± std over the seeds; ``results.json`` and
``table.md`` are written to ``--out``.

    python benchmarks/accuracy_fashion_mnist.py [--arch vgg11|resnet20] [--width 0.25] [--seeds 3] [--finetune]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from _common import RESULTS, datamodule, set_threads, vgg

from lightning_edit import ClassifierModule
from lightning_edit.discedit import channel_scores, prunable_layers, prune_channels, recalibrate_batchnorm
from lightning_edit.models import ViT, resnet20

ARMS = {  # label -> (importance, feature site, class reduction)
    "DISCEDIT (conv output)": ("discedit", "conv", "min"),
    "DISCEDIT (after BN+ReLU)": ("discedit", "activation", "min"),
    "DISCEDIT (after BN+ReLU, mean over classes)": ("discedit", "activation", "mean"),
    "DISCEDIT (after BN+ReLU, max over classes)": ("discedit", "activation", "max"),
    "L1 (filter)": ("l1", "conv", "min"),
    "L2 (torch-pruning group)": ("tp_l2", "conv", "min"),
    "Taylor (torch-pruning)": ("taylor", "conv", "min"),
    "BN scale (torch-pruning)": ("bn_scale", "conv", "min"),
    "LAMP (torch-pruning)": ("lamp", "conv", "min"),
    "random": ("random", "conv", "min"),
    "DISCEDIT + mRMR (conv output)": ("discedit", "conv", "min"),
    "DISCEDIT + mRMR (after BN+ReLU)": ("discedit", "activation", "min"),
}
REDUNDANCY = {"DISCEDIT + mRMR (conv output)": 1.0, "DISCEDIT + mRMR (after BN+ReLU)": 1.0}  # layer scope only
MODEL_PRUNING = "Lightning ModelPruning (L1-structured masks)"  # layer scope; as many channels masked as L1 removes


@torch.no_grad()
def latency_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int = 20) -> float:
    """Median CPU latency of one forward pass of ``x`` (ms)."""
    model.eval()
    model(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def model_pruning_arm(module, amount: float) -> None:
    """Lightning's ``ModelPruning`` callback, applied once through its own API: ``ln_structured`` masks (L1 norm,
    output channels) of ``amount`` of the channels of every conv. The masks stay attached (fine-tuning keeps them);
    the parameter count and the latency are the dense model's."""
    from lightning.pytorch.callbacks import ModelPruning

    convs = [(m, "weight") for m in module.model.modules() if isinstance(m, torch.nn.Conv2d)]
    callback = ModelPruning(pruning_fn="ln_structured", amount=amount, pruning_norm=1, pruning_dim=0,
                            parameters_to_prune=convs, use_global_unstructured=False, make_pruning_permanent=True,
                            verbose=0)
    callback.setup(None, module, "fit")
    callback.apply_pruning(amount)


def trainer(epochs: int, seed: int | None = None) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
                     limit_val_batches=0, deterministic=seed is not None)


def arm_scores(model: torch.nn.Module, layers: dict, label: str, calib: list, seed: int, example: torch.Tensor,
               normalize: bool = False) -> dict[str, torch.Tensor]:
    """The channel scores of arm ``label`` (:data:`ARMS`, :data:`REDUNDANCY`); ``normalize`` (global scope) applies to
    DISCEDIT and L1, whose scores differ in scale between layers."""
    importance, site, reduction = ARMS[label]
    return channel_scores(model, layers, importance, calib, 10, "fisher", site=site, class_reduction=reduction,
                          generator=torch.Generator().manual_seed(seed), example_input=example,
                          normalize=normalize and importance in ("discedit", "l1"), redundancy=REDUNDANCY.get(label, 0.0))


def train_base(seed: int, dm, side: int, width: float, epochs: int, arch: str = "vgg11") -> ClassifierModule:
    """The benchmark's network (VGG-11 at ``width``, ResNet-20 with option-B shortcuts, or the small ViT) trained anew with ``seed``
    (Adam lr 2e-3, ``epochs`` epochs), as in :func:`main`."""
    L.seed_everything(seed, verbose=False)
    if arch == "vit":  # 3 pre-norm blocks of 4 heads, d = 64, 7x7 patches (4x4 on the 8x8 digits)
        net = ViT(image_size=side, patch_size=7 if side % 7 == 0 else 4, dim=64, depth=3, num_heads=4)
    else:
        net = vgg(side, width) if arch == "vgg11" else resnet20(in_channels=1, num_classes=10)
    base = ClassifierModule(net, optimizer=functools.partial(torch.optim.Adam, lr=2e-3))
    trainer(epochs).fit(base, datamodule=dm)
    return base


@torch.no_grad()
def test_acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float(torch.cat([model(b).argmax(1) for b in x.split(1000)]).eq(y).float().mean())


def sample_batches(dm, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dm.train_set), generator=g)[: n * 128]
    x, y = dm.train_set.x[idx], dm.train_set.y[idx]
    return list(zip(x.split(128), y.split(128)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="parameter sparsities")
    ap.add_argument("--scopes", nargs="+", default=["layer", "global"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arch", choices=["vgg11", "resnet20"], default="vgg11", help="resnet20: option-B shortcuts")
    ap.add_argument("--width", type=float, default=0.25, help="VGG-11 width multiplier")
    ap.add_argument("--finetune", action="store_true", help="also one fine-tuning epoch per arm (slow)")
    ap.add_argument("--arms", nargs="+", default=None, help=f"subset of the arms (labels); '{MODEL_PRUNING}' needs 'L1 (filter)'")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    arms = {k: v for k, v in ARMS.items() if args.arms is None or k in args.arms}
    with_model_pruning = args.arms is None or MODEL_PRUNING in args.arms
    set_threads()
    warnings.filterwarnings("ignore", message=".*absent from the calibration data.*")
    tag = f"w{args.width:g}" if args.arch == "vgg11" else args.arch
    out = Path(args.out or RESULTS / f"accuracy_fashion_mnist_{tag}")
    dm, side = datamodule(batch_size=128, train_subset=args.train_subset)
    dm.setup()
    x_test, y_test = dm.test_set.x, dm.test_set.y
    example = torch.zeros(1, 1, side, side)
    results: dict[str, list[float]] = {}
    dense_accs = []

    def write(quiet: bool = True) -> None:
        """Table and results.json of the seeds done so far (written after every seed)."""
        def cell(key: str) -> str:
            v = results.get(key)
            if not v:
                return "—"
            m, s = statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)
            return f"{m:.3f} ± {s:.3f}"

        cols = ["no_ft", "recal"] + (["ft"] if args.finetune else [])
        names = {"no_ft": "no fine-tune", "recal": "BN-recalibrated", "ft": "1 fine-tuning epoch"}
        lines = [f"Dense test accuracy {statistics.fmean(dense_accs):.3f} ± {statistics.stdev(dense_accs) if len(dense_accs) > 1 else 0:.3f} "
                 f"({'VGG-11, width ' + format(args.width, 'g') if args.arch == 'vgg11' else 'ResNet-20 (option B)'}, {len(dense_accs)} seeds)", "",
                 "| scope | param. sparsity | method | " + " | ".join(names[c] for c in cols) + " |",
                 "|---|---|---|" + "---|" * len(cols)]
        for scope in args.scopes:
            for sparsity in args.sparsities:
                for label in list(arms) + ([MODEL_PRUNING] if with_model_pruning and scope == "layer" else []):
                    key = f"{scope}|{sparsity}|{label}"
                    lines.append(f"| {scope} | {sparsity:.0%} | {label} | " + " | ".join(cell(f"{key}|{c}") for c in cols) + " |")
        table = "\n".join(lines)
        if not quiet:
            print("\n" + table)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table + "\n")
        (out / "results.json").write_text(json.dumps({"settings": vars(args), "seeds_done": len(dense_accs), "dense_test_accuracy": dense_accs,
                                                      "results": results}, indent=2))
        if not quiet:
            print(f"written: {out}/table.md, results.json")

    for seed in range(args.seeds):
        t0 = time.perf_counter()
        base = train_base(seed, dm, side, args.width, args.epochs, args.arch)
        dense = test_acc(base.model, x_test, y_test)
        dense_accs.append(dense)
        dense_params = sum(p.numel() for p in base.model.parameters())
        print(f"seed {seed}: trained {args.epochs} epochs in {time.perf_counter() - t0:.0f} s; dense test acc {dense:.4f}, "
              f"{dense_params:,} parameters", flush=True)
        calib, recal = sample_batches(dm, 16, 1000 + seed), sample_batches(dm, 20, 2000 + seed)
        for scope in args.scopes:
            for sparsity in args.sparsities:
                for label in arms:
                    if scope == "global" and label in REDUNDANCY:
                        continue
                    module = copy.deepcopy(base)
                    model = module.model
                    layers = prunable_layers(model)
                    scores = arm_scores(model, layers, label, calib, seed, example, normalize=scope == "global")
                    prune_channels(model, example, scores, sparsity, layers, sparsity_type="parameters", scope=scope,
                                   min_channels=1, dense_params=dense_params)
                    kept = sum(p.numel() for p in model.parameters()) / dense_params
                    accs = {"no_ft": test_acc(model, x_test, y_test)}
                    recalibrate_batchnorm(model, recal)
                    accs["recal"] = test_acc(model, x_test, y_test)
                    if args.finetune:
                        trainer(1).fit(module, datamodule=dm)
                        accs["ft"] = test_acc(model, x_test, y_test)
                    for col, v in accs.items():
                        results.setdefault(f"{scope}|{sparsity}|{label}|{col}", []).append(v)
                    results.setdefault(f"{scope}|{sparsity}|{label}|params_kept", []).append(kept)
                    print(f"  {scope:<6} {sparsity:.1f} {label:<44} params kept {kept:.3f}  no-FT {accs['no_ft']:.4f}  "
                          f"BN-recal {accs['recal']:.4f}" + (f"  1-ep FT {accs['ft']:.4f}" if "ft" in accs else ""),
                          flush=True)
                    if label == "L1 (filter)" and scope == "layer" and with_model_pruning:
                        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
                        dense_convs = [m for m in base.model.modules() if isinstance(m, torch.nn.Conv2d)]
                        amount = 1 - sum(c.out_channels for c in convs) / sum(c.out_channels for c in dense_convs)
                        masked = copy.deepcopy(base)
                        model_pruning_arm(masked, amount)
                        m_accs = {"no_ft": test_acc(masked.model, x_test, y_test)}
                        recalibrate_batchnorm(masked.model, recal)
                        m_accs["recal"] = test_acc(masked.model, x_test, y_test)
                        if args.finetune:
                            trainer(1).fit(masked, datamodule=dm)
                            m_accs["ft"] = test_acc(masked.model, x_test, y_test)
                        for col, v in m_accs.items():
                            results.setdefault(f"{scope}|{sparsity}|{MODEL_PRUNING}|{col}", []).append(v)
                        results.setdefault(f"{scope}|{sparsity}|{MODEL_PRUNING}|params_kept", []).append(1.0)
                        results.setdefault(f"{scope}|{sparsity}|{MODEL_PRUNING}|channels_masked", []).append(amount)
                        for name, net in (("masked", masked.model), ("l1_pruned", model), ("dense", base.model)):
                            results.setdefault(f"{scope}|{sparsity}|latency_ms|{name}", []).append(latency_ms(net, x_test[:128]))
                        print(f"  {scope:<6} {sparsity:.1f} {MODEL_PRUNING:<44} channels masked {amount:.3f}  no-FT "
                              f"{m_accs['no_ft']:.4f}  BN-recal {m_accs['recal']:.4f}"
                              + (f"  1-ep FT {m_accs['ft']:.4f}" if "ft" in m_accs else ""), flush=True)

        write()
    write(quiet=False)


if __name__ == "__main__":
    main()
