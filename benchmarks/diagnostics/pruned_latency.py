"""Inference latency of the pruned vs the dense network beside the MACs ratio reached, for a MACs budget
(``sparsity_type="macs"``, the default here) or a channel / parameter one. Batch 128, best of 7 alternating runs.
Targets: the MACs ratio reached within 2% of the target, and the latency ratio within 80% of the MACs ratio,
i.e. (1 - latency_ratio) >= 0.8 * (1 - macs_ratio).

    python benchmarks/diagnostics/pruned_latency.py [--sparsity 0.5] [--sparsity-type macs] [--nets vgg11_w0.25 vit]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common and the headline scripts
from _common import RESULTS, paired_best_time, vgg, write_results  # noqa: E402

from lightning_edit.discedit import channel_scores, count_macs_params, prunable_layers, prune_channels  # noqa: E402
from lightning_edit.models import ViT, resnet20  # noqa: E402

NETS = {
    "vgg11_w0.25": lambda side: vgg(side, 0.25), "vgg11_w0.5": lambda side: vgg(side, 0.5),
    "vgg11_w1": lambda side: vgg(side, 1.0), "resnet20": lambda side: resnet20(in_channels=1, num_classes=10),
    "vit": lambda side: ViT(image_size=side, patch_size=7, dim=64, depth=3, num_heads=4),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--sparsity-type", choices=["channels", "parameters", "macs"], default="macs")
    ap.add_argument("--nets", nargs="+", default=["vgg11_w0.25", "vgg11_w0.5", "vgg11_w1", "resnet20", "vit"],
                    choices=list(NETS))
    ap.add_argument("--side", type=int, default=28)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    results: dict[str, float] = {}
    rows = ["| device | network | MACs ratio (target) | MACs ratio reached | latency ratio | speed-up kept |",
            "|---|---|---|---|---|---|"]
    for net in args.nets:
        dense = NETS[net](args.side).eval()
        example = torch.zeros(1, 1, args.side, args.side)
        pruned = copy.deepcopy(dense)
        layers = prunable_layers(pruned)
        # Which channels go does not change the cost: L1 scores are enough for timing.
        prune_channels(pruned, example, channel_scores(pruned, layers, "l1"), args.sparsity, layers,
                       sparsity_type=args.sparsity_type, min_channels=1)
        macs_ratio = count_macs_params(pruned, example)[0] / count_macs_params(dense, example)[0]
        for dev in args.device:
            device = torch.device(dev)
            x = torch.randn(args.batch, 1, args.side, args.side, device=device)
            d, p = dense.to(device), pruned.to(device)
            with torch.inference_mode():
                t_dense, t_pruned = paired_best_time(lambda: d(x), lambda: p(x), device=device)
            latency = t_pruned / t_dense
            kept = (1 - latency) / (1 - macs_ratio)
            target = f"{1 - args.sparsity:.3f}" if args.sparsity_type == "macs" else "–"
            rows.append(f"| {dev} | {net} | {target} | {macs_ratio:.3f} | {latency:.3f} | {kept:.0%} |")
            results.update({f"{dev}|{net}|macs_ratio": macs_ratio, f"{dev}|{net}|latency_ratio": latency,
                            f"{dev}|{net}|dense_ms": 1000 * t_dense, f"{dev}|{net}|pruned_ms": 1000 * t_pruned})
            print(rows[-1], flush=True)
    out = Path(args.out or RESULTS / f"pruned_latency_{args.sparsity_type}{args.sparsity:g}")
    write_results(out, "\n".join(rows), {"settings": vars(args), "results": results}, quiet=False)


if __name__ == "__main__":
    main()
