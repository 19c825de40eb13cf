"""Class-unlearning evaluation (FA/RA, MIA efficacy, relearn time, durability) and the literature's baselines
(NegGrad+, random labels, SalUn), for DISCEDIT-U (:mod:`lightning_edit.discedit`) and any other unlearning method."""

from lightning_edit.unlearning.baselines import neggrad_plus, random_labels, saliency_mask, salun
from lightning_edit.unlearning.metrics import (
    SIGNALS,
    attack_signal,
    durability,
    forget_remaining_accuracy,
    mia_efficacy,
    predictions,
    relearn_steps,
    subsample,
)

__all__ = [
    "SIGNALS", "attack_signal", "durability", "forget_remaining_accuracy", "mia_efficacy", "neggrad_plus",
    "predictions", "random_labels", "relearn_steps", "saliency_mask", "salun", "subsample",
]
