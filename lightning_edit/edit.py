"""One editor vocabulary for the whole package.

Every editor offers ``edit(model, x, y) -> (edited copy, EditResult)``: ``x (B, ...)`` are the edit inputs,
``y (B,)`` the classes they must get, the input model is never modified, and :class:`EditResult` has the same
fields everywhere (``success``, ``steps``, ``loss``, ``edit_accuracy``, ``drift``).

| name | class | what changes | source |
|---|---|---|---|
| ``gradient`` | :class:`~lightning_edit.editable.GradientEditor` | parameters matching patterns, k optimiser steps on the edit loss | Sinitsin et al. 2020 |
| ``finetune`` | :class:`~lightning_edit.robust.FineTuneEditor` | all parameters or named layers, Adam + locality | Brown et al. 2023 |
| ``interpolation`` | :class:`~lightning_edit.robust.InterpolationEditor` | one layer, moved back along the fine-tuning line (1-LI) | Brown et al. 2023 |
| ``low_rank`` | :class:`~lightning_edit.robust.LowRankEditor` | one layer, a rank-r change | Brown et al. 2023 |
| ``metanetwork`` | :class:`MetanetworkEdit` | every weight, by a trained graph metanetwork, in one pass | Kalogeropoulos et al. 2025 |

``make_editor(name, **args)`` builds one by name, e.g. from YAML
(``RobustEditReport(editors=[{"name": "finetune", "layers": ["hidden"]}, ...])``).

Which editor, from the measured table (``benchmarks/robust_editors_fashion_mnist.py``: 32 misclassified
Fashion-MNIST shirts fixed, 3 edit sets, every editor built by name with ``retain=`` and its defaults):

- **A batch of a trained model's mistakes, with training data at hand:** ``make_editor("finetune",
  retain=batches, select=held_out)``, ``held_out`` being training batches the edit does not see (or pass a training
  loader as ``retain``: the batches after the first ``retain_limit`` are held out). With retain data the edit is
  constrained to a retain-KL budget, so it needs no learning-rate tuning; with held-out data it also makes the edit
  with retain examples attacked towards the edit's labels and keeps whichever has the higher edit accuracy, then
  held-out PGD accuracy (``adversarial_eps="auto"``). ResNet-20: edit success 1.00, clean accuracy +2.8 points,
  collateral shift 1.5%, PGD −1.4 points (every bar met; the aimed edit was chosen on all 3 edit sets); VGG-11 ¼:
  1.00, +0.6, 2.4%, PGD −1.6 (the clean edit on 1 of 3 edit sets; shift above the 2% bar). It takes 2.5–2.9× the
  clean edit.
- **The same without held-out data:** ``make_editor("finetune", retain=batches)`` makes the clean constrained edit
  (``budget=0.02`` nats). VGG-11 ¼: 0.99, +0.9, 2.0%, PGD −1.3 (every bar met); ResNet-20: 0.97, +1.7, 0.9%, PGD
  −2.9 (PGD bar missed). The same editor with a fixed penalty (``budget=None``) cost 28.7 and 52.4 points.
- **Only one layer may change** (``interpolation``, ``low_rank``, ``finetune`` with ``layers=``): within the same
  budget they fix fewer edits (last conv: 0.30–0.45 of them on VGG-11 ¼, 0.33–0.39 on ResNet-20), and keep more
  PGD accuracy on ResNet-20 (−1.3 against −2.9), less on VGG-11 ¼; raise ``budget`` to trade locality for success.
- **No retain data:** every editor edits as published and warns; fine-tuning every parameter cost 49 (VGG-11 ¼)
  and 72 (ResNet-20) points here.
- **One edit at a time, inside training:** ``gradient`` (Editable Training's editor, :class:`EditableModule`).
- **A requirement, not an edit set** (pruning, data minimisation, fairness): ``metanetwork``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_edit.editable.editors import EditResult, GradientEditor
from lightning_edit.robust.editors import Editor, FineTuneEditor, InterpolationEditor, LowRankEditor


class MetanetworkEdit:
    """A trained :class:`~lightning_edit.metanet.MetanetworkEditor` under the editor protocol.

    The metanetwork meets a requirement (pruning, data minimisation, fairness), not an edit set: ``x, y`` are only
    measured. ``success`` is True (the requirement is enforced exactly at edit time), ``steps`` is 0 (one forward
    pass), ``loss`` and ``edit_accuracy`` are the cross-entropy and accuracy on ``(x, y)``, ``drift`` is None.

    Args:
        checkpoint: path of a ``MetanetworkEditor`` checkpoint, or the editor itself.

    Raises:
        FileNotFoundError: for a missing checkpoint.
    """

    def __init__(self, checkpoint: Any) -> None:
        from lightning_edit.metanet import MetanetworkEditor

        self.editor = checkpoint if isinstance(checkpoint, MetanetworkEditor) else MetanetworkEditor.load_from_checkpoint(checkpoint)

    def edit(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[nn.Module, EditResult]:
        edited = self.editor.edit(model)
        with torch.no_grad():
            logits = edited(x)
        return edited, EditResult(True, 0, float(F.cross_entropy(logits, y)),
                                  edit_accuracy=float((logits.argmax(-1) == y).float().mean()))


EDITORS: dict[str, type] = {
    "gradient": GradientEditor,
    "finetune": FineTuneEditor,
    "interpolation": InterpolationEditor,
    "low_rank": LowRankEditor,
    "metanetwork": MetanetworkEdit,
}
"""Editor classes by the name :func:`make_editor` takes."""


def make_editor(name: str, **args: Any) -> Editor:
    """The editor called ``name`` (a key of :data:`EDITORS`) built with ``args``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones), or arguments the editor rejects.
    """
    if name not in EDITORS:
        raise ValueError(f"Unknown editor {name!r}; choose one of {sorted(EDITORS)}.")
    try:
        return EDITORS[name](**args)
    except TypeError as err:
        raise ValueError(f"Bad arguments for editor {name!r}: {err}") from err


__all__ = ["EDITORS", "EditResult", "Editor", "FineTuneEditor", "GradientEditor", "InterpolationEditor", "LowRankEditor",
           "MetanetworkEdit", "make_editor"]
