"""The unlearning baselines (NegGrad+, random labels, SalUn) on the real digits."""

from __future__ import annotations

import pytest
import torch

from lightning_edit.unlearning import forget_remaining_accuracy, neggrad_plus, random_labels, saliency_mask, salun, subsample

FORGET = [3]


@pytest.fixture(scope="module")
def data(trained_residual_digits):
    module, dm = trained_residual_digits
    train, test = (dm.train_set.x, dm.train_set.y), (dm.test_set.x, dm.test_set.y)
    split = lambda d: list(zip(d[0].split(64), d[1].split(64)))  # noqa: E731
    return module.model, split(subsample(train, FORGET)), split(subsample(train, FORGET, exclude=True)), test


@pytest.mark.parametrize("method", ["neggrad_plus", "random_labels", "salun"])
def test_baseline_lowers_forget_accuracy_and_leaves_the_input_alone(data, method):
    model, forget, retain, test = data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    f0, r0 = forget_remaining_accuracy(model, test, FORGET)
    torch.manual_seed(0)
    fn = {"neggrad_plus": lambda: neggrad_plus(model, forget, retain, epochs=3, alpha=0.9),
          "random_labels": lambda: random_labels(model, forget, retain, 10, epochs=3),
          "salun": lambda: salun(model, forget, retain, 10, epochs=3)}[method]
    edited = fn()
    f1, r1 = forget_remaining_accuracy(edited, test, FORGET)
    assert f1 < f0 - 0.3 and r1 > r0 - 0.1, (f0, f1, r0, r1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_salun_updates_only_salient_weights(data):
    model, forget, retain, _ = data
    mask = saliency_mask(model, forget, saliency=0.3)
    total = sum(m.numel() for _, m in mask)
    assert abs(sum(int(m.sum()) for _, m in mask) / total - 0.3) < 0.01
    edited = salun(model, forget, retain, 10, saliency=0.3)
    for (name, p0), p1, (_, m) in zip(model.named_parameters(), edited.parameters(), mask):
        assert torch.equal(p0[m == 0], p1[m == 0]), name


@pytest.mark.parametrize("call, match", [
    (lambda m, f, r: neggrad_plus(m, f, r, alpha=1.0), r"alpha must be in \(0, 1\)"),
    (lambda m, f, r: neggrad_plus(m, [], r), "at least one forget batch"),
    (lambda m, f, r: random_labels(m, f, r, 10, epochs=0), "epochs must be >= 1"),
    (lambda m, f, r: salun(m, f, r, 10, saliency=0.0), r"saliency must be in \(0, 1\]"),
])
def test_bad_input(data, call, match):
    model, forget, retain, _ = data
    with pytest.raises(ValueError, match=match):
        call(model, forget, retain)


def test_saliency_mask_takes_the_fraction_even_when_most_gradients_are_zero():
    """A network whose first layer is dead (every ReLU input negative) has zero forget-loss gradients there: the mask
    must still hold exactly the salient fraction, not every weight tied at zero."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    with torch.no_grad():
        net[0].bias.fill_(-100.0)
    forget = [(torch.randn(16, 4), torch.zeros(16, dtype=torch.long))]
    mask = saliency_mask(net, forget, saliency=0.5)
    total = sum(m.numel() for _, m in mask)
    assert sum(int(m.sum()) for _, m in mask) == round(0.5 * total)
