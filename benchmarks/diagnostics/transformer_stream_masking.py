"""Can DISCEDIT-U forget a class of a transformer encoder by masking its residual stream? (issue 25)

On ResNet-20 the class is forgotten once the channels of the last stage's residual stream are masked in every writer
(``coupled=True``). A transformer's stream has the same shape of problem: every attention ``out_proj`` and FFN
``linear2`` adds into it, and a post-LN ``nn.TransformerEncoderLayer`` renormalises it after each addition. This
diagnostic scores the stream's dimensions with DISCEDIT-U's own score (the Fisher witness bound on the total variation
distance between the forget class and the rest, on the token-mean of the last LayerNorm's output, the features the
classifier reads) and masks the top k at two sites:

- ``head features``: the last LayerNorm's weight and bias (the dimensions are zero where the classifier reads them);
- ``whole stream``: those dimensions in every writer of the stream (the embedding, every ``out_proj`` and
  ``linear2``) and every LayerNorm's weight and bias, so the dimension is zero in the stream from the embedding on
  (the analogue of ``coupled=True``).

As ``ratio="auto"`` does, k is the smallest that brings the calibration (training) forget accuracy to
``forget_target`` (0.02, the package default), capped at half the dimensions. The package's default edit
(``unlearn()``: FFN neurons of the last layer) is the reference row. Model: a user's ``nn.TransformerEncoder``
classifier (the tests' ``Encoder``, initialised per seed: digits rows as 8 tokens, width 32, 2 layers, 4 heads,
mean pooling), trained ``--epochs`` epochs per seed, every class forgotten in turn, no fine-tuning. Writes
``results.json`` and ``table.md``.

    python benchmarks/diagnostics/transformer_stream_masking.py [--seeds 3] [--epochs 10]
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import RESULTS, set_threads, write_results

from lightning_edit import ClassifierModule
from lightning_edit.data import DigitsDataModule
from lightning_edit.discedit import unlearn
from lightning_edit.discedit.moments import collect_moments
from lightning_edit.discedit.scores import unlearning_scores
from lightning_edit.discedit.unlearn import DEFAULT_FORGET_TARGET

SITES = ("head features", "whole stream")


class Encoder(nn.Module):
    """A user's nn.TransformerEncoder classifier: 8x8 digit rows as 8 tokens, width 32. The tests' ``Encoder``
    without its fixed ``torch.manual_seed(0)``, so that each seed is a different network."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x[:, 0])).mean(1))


@torch.no_grad()
def accuracies(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: int) -> tuple[float, float]:
    pred = model(x).argmax(1)
    return float((pred[y == c] == c).float().mean()), float((pred[y != c] == y[y != c]).float().mean())


def stream_scores(model: Encoder, x: torch.Tensor, y: torch.Tensor, c: int) -> torch.Tensor:
    """DISCEDIT-U's score of each stream dimension, ``(32,)``, on the last LayerNorm's output."""
    moments = collect_moments(model, {"norm": model.encoder.layers[-1].norm2}, [(x, y)], 10)["norm"]
    return unlearning_scores(moments, c)


@torch.no_grad()
def masked(model: Encoder, dims: torch.Tensor, site: str) -> Encoder:
    edited = copy.deepcopy(model)
    norms = [edited.encoder.layers[-1].norm2]
    writers: list[nn.Linear] = []
    if site == "whole stream":
        norms = [n for layer in edited.encoder.layers for n in (layer.norm1, layer.norm2)]
        writers = [edited.embed] + [w for layer in edited.encoder.layers for w in (layer.self_attn.out_proj, layer.linear2)]
    for module in norms + writers:
        module.weight[dims] = 0
        module.bias[dims] = 0
    return edited


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    set_threads()
    out = Path(args.out or RESULTS / "transformer_stream_masking_digits")
    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    xt, yt, xs, ys = dm.train_set.x, dm.train_set.y, dm.test_set.x, dm.test_set.y
    rows = []
    for seed in range(args.seeds):
        L.seed_everything(seed, verbose=False)
        module = ClassifierModule(Encoder(), optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
        L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(module, datamodule=dm)
        model = module.model.eval()
        for c in range(10):
            f0, r0 = accuracies(model, xs, ys, c)
            base = {"seed": seed, "class": c, "base_forget_acc": f0, "base_remaining_acc": r0}
            calib = list(zip(xt.split(64), yt.split(64)))
            edited, report = unlearn(model, calib, [c])
            f1, r1 = accuracies(edited, xs, ys, c)
            rows.append({**base, "site": "FFN neurons, last layer (package default)", "masked": report.fraction_masked,
                         "forget_acc": f1, "RA": r0 - r1})
            order = stream_scores(model, xt, yt, c).argsort(descending=True)
            width = len(order)
            for site in SITES:
                for k in range(1, width // 2 + 1):
                    candidate = masked(model, order[:k], site)
                    if accuracies(candidate, xt, yt, c)[0] <= DEFAULT_FORGET_TARGET:
                        break
                f1, r1 = accuracies(candidate, xs, ys, c)
                rows.append({**base, "site": site, "masked": k / width, "forget_acc": f1, "RA": r0 - r1})
            print(f"seed {seed} class {c}: " + "; ".join(f"{r['site'][:13]} F {r['forget_acc']:.2f} RA "
                                                         f"{100 * r['RA']:.1f} k {r['masked']:.2f}"
                                                         for r in rows[-3:]), flush=True)
    summarise(rows, args, out)


def summarise(rows: list[dict], args: argparse.Namespace, out: Path) -> None:
    def ms(vals, scale=100.0, digits=1):
        return f"{statistics.fmean(v * scale for v in vals):.{digits}f} ± {statistics.stdev(v * scale for v in vals):.{digits}f}"

    base = [r["base_forget_acc"] for r in rows if r["site"] == SITES[0]]
    lines = [f"A user's nn.TransformerEncoder on the 8x8 digits ({args.epochs} epochs, base test accuracy of a class "
             f"{ms(base)}%), {args.seeds} seeds × 10 classes, each forgotten in turn without fine-tuning; mean ± std "
             "over the pairs. 'masked' is the share of the site's components (stream dimensions: of 32; FFN: the "
             "package's fraction of the edited layer's weights). 'FA≤5 & RA≤2' counts pairs at forget accuracy ≤ 5% "
             "with RA ≤ 2 points.", "",
             "| components masked | forget acc (%) | RA (points) | FA≤5 & RA≤2 | masked |", "|---|---|---|---|---|"]
    summary = {}
    for site in dict.fromkeys(r["site"] for r in rows):
        sel = [r for r in rows if r["site"] == site]
        ok = sum(r["forget_acc"] <= 0.05 and r["RA"] <= 0.02 for r in sel)
        summary[site] = {"forget_acc": ms([r["forget_acc"] for r in sel]), "RA": ms([r["RA"] for r in sel]),
                         "meets_target": f"{ok}/{len(sel)}", "masked": ms([r["masked"] for r in sel], 1, 2)}
        s = summary[site]
        lines.append(f"| {site} | {s['forget_acc']} | {s['RA']} | {s['meets_target']} | {s['masked']} |")
    write_results(out, "\n".join(lines), {"settings": vars(args), "summary": summary, "rows": rows}, quiet=False)


if __name__ == "__main__":
    main()
