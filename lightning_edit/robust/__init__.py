"""Editors that keep robustness and a robustness report (Brown, Godfrey, Nizinski, Tu, Kvinge 2023)."""

from lightning_edit.robust.attacks import CORRUPTIONS, contrast, gaussian_blur, gaussian_noise, pgd_attack
from lightning_edit.robust.editors import (
    Editor,
    FineTuneEditor,
    InterpolationEditor,
    Locality,
    LowRankEditor,
    get_layer,
    held_out_pgd_accuracy,
)
from lightning_edit.robust.report import (
    DEFAULT_CORRUPTIONS,
    collateral_shift,
    compare_edit,
    report_change,
    robustness_report,
)

__all__ = [
    "CORRUPTIONS", "contrast", "gaussian_blur", "gaussian_noise", "pgd_attack",
    "Editor", "FineTuneEditor", "InterpolationEditor", "Locality", "LowRankEditor", "get_layer",
    "held_out_pgd_accuracy",
    "DEFAULT_CORRUPTIONS", "collateral_shift", "compare_edit", "report_change", "robustness_report",
]
