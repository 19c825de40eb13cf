"""Benchmark 2: inference latency of the pruned vs the dense VGG-style CNN at 50% channel sparsity
(batch 128), beside the MAC ratio. Target: latency ratio within 80% of the MAC ratio, i.e.
(1 - latency_ratio) >= 0.8 * (1 - mac_ratio).

    python benchmarks/diagnostics/pruned_latency.py [--sparsity 0.5] [--width 0.25] [--device cpu|cuda]
"""

from __future__ import annotations

import sys
from pathlib import Path

import argparse
import copy

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common and the headline scripts
from _common import best_time, vgg

from lightning_edit.discedit import channel_scores, count_macs_params, prunable_layers, prune_channels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--width", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--side", type=int, default=28)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"{'device':<6} {'width':>5} {'MAC ratio':>10} {'latency ratio':>14} {'speed-up kept':>14}")
    for width in args.width:
        dense = vgg(args.side, width).eval()
        example = torch.zeros(1, 1, args.side, args.side)
        pruned = copy.deepcopy(dense)
        layers = prunable_layers(pruned)
        # Which channels go does not change the cost: L1 scores are enough for timing.
        prune_channels(pruned, example, channel_scores(pruned, layers, "l1"), args.sparsity, layers, min_channels=1)
        mac_ratio = count_macs_params(pruned, example)[0] / count_macs_params(dense, example)[0]
        for dev in args.device:
            device = torch.device(dev)
            x = torch.randn(args.batch, 1, args.side, args.side, device=device)
            d, p = dense.to(device), pruned.to(device)
            with torch.inference_mode():
                t_dense = best_time(lambda: d(x), device=device)
                t_pruned = best_time(lambda: p(x), device=device)
            lat = t_pruned / t_dense
            kept = (1 - lat) / (1 - mac_ratio)
            print(f"{dev:<6} {width:>5} {mac_ratio:>10.3f} {lat:>14.3f} {kept:>13.0%}")


if __name__ == "__main__":
    main()
