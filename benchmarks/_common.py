"""Shared set-up for the benchmarks: the VGG-style CNN on Fashion-MNIST (digits as a fallback)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lightning_edit.data import DigitsDataModule, FashionMNISTDataModule
from lightning_edit.models import VGG

RESULTS = Path(__file__).resolve().parent / "results"
"""Where every benchmark writes its table and ``results.json`` by default, whatever the working directory."""


ARCHS = {"vgg11_w0.25": ("vgg11", 0.25), "vgg11_w0.5": ("vgg11", 0.5), "resnet20": ("resnet20", 1.0),
         "vit": ("vit", 1.0)}
"""Benchmark network name -> (``train_base`` architecture, VGG width multiplier)."""


def mean_std(v: list[float]) -> str:
    """``mean ± sample std`` of per-seed values (``—`` for none)."""
    import statistics

    return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.3f}" if v else "—"


def write_results(out: Path, table: str, payload: dict, quiet: bool = True) -> None:
    """Write ``table.md`` and ``results.json`` to ``out`` (printing the table unless ``quiet``)."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    if not quiet:
        print("\n" + table + f"\nwritten: {out}/table.md, results.json")


def datamodule(batch_size: int = 128, train_subset: int | None = None):
    """Fashion-MNIST when its IDX files are installed, else the 8x8 digits (said on stdout)."""
    fm = FashionMNISTDataModule(batch_size=batch_size, train_subset=train_subset)
    if fm._find("train-images-idx3-ubyte") is not None:
        print("data: Fashion-MNIST")
        return fm, 28
    print("data: sklearn digits (Fashion-MNIST not installed)")
    return DigitsDataModule(batch_size=batch_size), 8


def add_pruning_arguments(ap) -> None:
    """The recipe arguments of the pruning benchmarks: ``--epochs 3 --train-subset 20000 --width 0.25 --seeds 3``."""
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--width", type=float, default=0.25, help="VGG-11 width multiplier")
    ap.add_argument("--seeds", type=int, default=3)


def set_threads() -> None:
    """The benchmarks' torch thread count: ``OMP_NUM_THREADS`` where set, else 2 (this machine's cores)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))


def pruning_setup(train_subset: int | None):
    """The pruning benchmarks' common start: 2 threads (``OMP_NUM_THREADS`` where set), the calibration-class warning
    silenced, the data set up.

    Returns ``(datamodule, side, x_test, y_test, example_input (1, 1, side, side))``.
    """
    import warnings

    set_threads()
    warnings.filterwarnings("ignore", message=".*absent from the calibration data.*")
    dm, side = datamodule(batch_size=128, train_subset=train_subset)
    dm.setup()
    return dm, side, dm.test_set.x, dm.test_set.y, torch.zeros(1, 1, side, side)


def ordered_groups(model: torch.nn.Module, example: torch.Tensor) -> list:
    """The channel groups of ``model``'s prunable layers (:func:`~lightning_edit.discedit.structured.channel_groups`), in
    the forward order of each group's first layer; a group's ``members`` are in forward order too."""
    from lightning_edit.discedit import prunable_layers
    from lightning_edit.discedit.structured import build_dependency_graph, channel_groups

    layers = prunable_layers(model)
    order = {n: i for i, n in enumerate(layers)}
    groups = sorted(channel_groups(model, build_dependency_graph(model, example), layers),
                    key=lambda g: min(order[n] for n in g.members))
    for g in groups:
        g.members = dict(sorted(g.members.items(), key=lambda item: order[item[0]]))
    return groups


def vgg(side: int, width: float = 0.25) -> VGG:
    return VGG("vgg11", in_channels=1, num_classes=10, width_multiplier=width, max_pools=4 if side >= 16 else 3)


def paired_best_time(fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int = 7,
                     device: torch.device | None = None) -> tuple[float, float]:
    """Minimum wall times of ``fn_a`` and ``fn_b`` over ``repeats`` alternating runs, after one warm-up of each."""
    a, b = [], []
    for _ in range(repeats):
        a.append(best_time(fn_a, repeats=1, device=device, warmup=not a))
        b.append(best_time(fn_b, repeats=1, device=device, warmup=not b))
    return min(a), min(b)


def best_time(fn: Callable[[], object], repeats: int = 7, device: torch.device | None = None, warmup: bool = True) -> float:
    """Minimum wall time over ``repeats`` runs after one warm-up unless ``warmup=False`` (synchronising CUDA when used)."""
    sync = (lambda: torch.cuda.synchronize()) if device is not None and device.type == "cuda" else (lambda: None)
    if warmup:
        fn()
        sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)
