"""Benchmark 1: DISCEDIT scoring cost (moment collection + TV bounds) over K calibration batches,
divided by one plain inference pass over the same K batches, for every witness and both feature sites
(conv output, or after BatchNorm + ReLU). Target: at most 1.5. Writes ``results.json`` to ``--out``.

    python benchmarks/diagnostics/scoring_overhead.py [--batches 16] [--device cpu|cuda]
"""

from __future__ import annotations

import sys

import argparse
import json
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common and the headline scripts
from _common import RESULTS, datamodule, paired_best_time, vgg

from lightning_edit.discedit import WITNESS_FUNCTIONS, channel_scores, prunable_layers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--witnesses", nargs="+", default=list(WITNESS_FUNCTIONS), choices=list(WITNESS_FUNCTIONS))
    ap.add_argument("--out", default=str(RESULTS / "scoring_overhead"))
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(2)
    dm, side = datamodule(batch_size=128)
    dm.setup()
    loader = dm.train_dataloader()
    batches = [(x.to(device), y.to(device)) for (x, y), _ in zip(loader, range(args.batches))]
    model = vgg(side, args.width).to(device).eval()
    layers = prunable_layers(model)

    @torch.no_grad()
    def inference():
        for x, _ in batches:
            model(x)

    print(f"device: {device}, batches: {len(batches)} x {batches[0][0].shape[0]}, layers scored: {len(layers)}")
    print(f"{'witness':<14} {'site':<11} {'scoring/inference':>18}")
    ratios: dict = {}
    base_times = []
    example = batches[0][0][:1]
    for site in ("conv", "activation"):
        for witness in args.witnesses:
            # inference and scoring alternate, 7 rounds each, and each keeps its best: both are timed in the
            # same window, so a drift of the machine's speed moves both
            base, t = paired_best_time(inference, lambda: channel_scores(model, layers, "discedit", batches, 10, witness,
                                                                         site=site, example_input=example), device=device)
            base_times.append(base)
            ratios[f"{witness}/{site}"] = t / base
            print(f"{witness:<14} {site:<11} {t / base:>18.2f}", flush=True)
    base = min(base_times)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "inference_s": base, "ratio": ratios}, indent=1))


if __name__ == "__main__":
    main()
