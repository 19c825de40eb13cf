"""Streaming class-conditional moments of component features (DISCEDIT, METHODS.md Sec. 1 "Cost").

Sums, not means, are accumulated (count, Σz, Σzzᵀ per class) so that shards on several devices or
DDP ranks combine exactly by addition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

FeatureKind = Literal["linear", "quadratic", "mean_energy", "exp_norm"]


def component_features(output: Tensor, kind: FeatureKind = "quadratic") -> Tensor:
    """Per-sample feature vector ``z_j`` of every component ``j`` of a layer output.

    A component is a channel: dim 1 of a conv output ``(N, C, H, W)`` or the last dim of a linear
    output ``(N, C)`` / ``(N, T, C)``. Its scalar summary ``s_j`` is the spatial (token) mean.

    - ``"linear"``: ``z = [s]`` (d = 1).
    - ``"quadratic"``: ``z = [s, s²]`` (d = 2); a linear witness on it is a quadratic polynomial
      witness on ``s`` (the authors' pruning feature; per-image, not per-mini-batch sums).
    - ``"mean_energy"``: ``z = [s, e]`` (d = 2) with ``e`` the spatial mean of the *squared* map. At the conv
      output ``s`` is, up to border terms, the kernel sums applied to the input channels' means, so a
      zero-sum filter (an edge or texture detector) has a near-constant ``s`` however much its map
      varies; ``e`` sees that variation. Equal to ``"quadratic"`` for a linear layer (one position).
      A departure from the paper (the authors' code uses ``[s, s²]``).
    - ``"exp_norm"``: ``z = [exp(-‖A_j‖)]`` (d = 1), the nonlinear scalar witness of the unlearning
      code, with ``‖A_j‖`` the RMS over positions of the map (the Frobenius norm divided by
      ``√(H·W)``, so that large maps do not underflow to 0).

    Shapes: ``output (N, C, ...)`` for convs or ``(N, ..., C)`` for linears -> ``(N, C, d)`` float64.
    """
    out = output.detach()
    if out.ndim == 2:
        flat = out.unsqueeze(-1)  # (N, C, 1)
    elif out.ndim == 4:
        flat = out.flatten(2)  # conv (N, C, H*W)
    else:
        flat = out.flatten(1, -2).transpose(1, 2)  # (N, T, C) -> (N, C, T)
    # Reduce over positions in the layer's precision (one pass), then move the (N, C) summary to float64.
    if kind == "exp_norm":
        return torch.exp(-flat.float().pow(2).mean(-1).sqrt().double()).unsqueeze(-1)
    flat = flat.float()
    s = flat.mean(-1).double()
    if kind == "mean_energy":
        return torch.stack([s, flat.pow(2).mean(-1).double()], -1)
    if kind == "linear":
        return s.unsqueeze(-1)
    if kind == "quadratic":
        return torch.stack([s, s * s], -1)
    raise ValueError(f"Unknown feature kind {kind!r}; use 'linear', 'quadratic', 'mean_energy' or 'exp_norm'.")


@dataclass
class ClassConditionalMoments:
    """Running sums of component features per class.

    Attributes:
        count: ``(K,)`` samples seen per class.
        sum: ``(K, C, d)`` Σ z per class.
        sum_outer: ``(K, C, d, d)`` Σ z zᵀ per class.
    All float64 on the device of the features.
    """

    count: Tensor
    sum: Tensor
    sum_outer: Tensor

    @classmethod
    def zeros(cls, num_classes: int, num_components: int, dim: int, device: torch.device | str | None = None):
        kw = dict(dtype=torch.float64, device=device)
        return cls(
            torch.zeros(num_classes, **kw),
            torch.zeros(num_classes, num_components, dim, **kw),
            torch.zeros(num_classes, num_components, dim, dim, **kw),
        )

    @property
    def num_classes(self) -> int:
        return self.count.shape[0]

    def update(self, z: Tensor, y: Tensor) -> None:
        """Add a batch: ``z (N, C, d)``, ``y (N,)`` integer class indices in ``[0, K)``. No host sync."""
        onehot = torch.nn.functional.one_hot(y, self.num_classes).to(z.dtype)  # (N, K)
        self.count += onehot.sum(0)
        n, c, d = z.shape
        self.sum += (onehot.T @ z.reshape(n, c * d)).view(-1, c, d)
        outer = (z.unsqueeze(-1) * z.unsqueeze(-2)).reshape(n, c * d * d)
        self.sum_outer += (onehot.T @ outer).view(-1, c, d, d)

    @classmethod
    def cat(cls, parts: list[ClassConditionalMoments]) -> ClassConditionalMoments | None:
        """The moments of several layers as one problem over all their components ``(K, ΣC, ...)``, or ``None``
        when the layers did not see the same samples (their counts differ)."""
        if not all(torch.equal(p.count, parts[0].count) for p in parts):
            return None
        return cls(parts[0].count, torch.cat([p.sum for p in parts], 1), torch.cat([p.sum_outer for p in parts], 1))

    def split(self, widths: list[int]) -> list[ClassConditionalMoments]:
        """The inverse of :meth:`cat`: views of ``widths`` consecutive components each."""
        return [ClassConditionalMoments(self.count, s, o) for s, o in
                zip(self.sum.split(widths, 1), self.sum_outer.split(widths, 1))]

    def all_reduce(self, reduce_sum: Callable[[Tensor], Tensor]) -> None:
        """Replace the sums by ``reduce_sum`` of them (e.g. a DDP all-reduce with op sum)."""
        self.count, self.sum, self.sum_outer = (reduce_sum(t) for t in (self.count, self.sum, self.sum_outer))

    def one_vs_rest(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Means and covariances of each class P_c and of the rest Q_c (all other samples pooled).

        Returns:
            ``mean_p (K, C, d)``, ``cov_p (K, C, d, d)``, ``mean_q``, ``cov_q`` (same shapes). Rows of
            classes with no sample (or no rest) are zeros; mask them with ``count``.
        """
        total_n, total_s, total_ss = self.count.sum(), self.sum.sum(0), self.sum_outer.sum(0)
        rest_n = total_n - self.count
        out = []
        for n, s, ss in ((self.count, self.sum, self.sum_outer), (rest_n, total_s - self.sum, total_ss - self.sum_outer)):
            n = n.clamp_min(1.0)[:, None, None]
            mean = s / n
            cov = ss / n[..., None] - mean.unsqueeze(-1) * mean.unsqueeze(-2)
            out += [mean, cov]
        return out[0], out[1], out[2], out[3]


FeatureSite = Literal["conv", "activation"]


def activation_transforms(model: nn.Module, layers: Mapping[str, nn.Module]) -> dict[str, Callable[[Tensor], Tensor]]:
    """For each layer, the map from its output to what the next layer consumes: ``relu(BN(out))``.

    The BatchNorm is the first one registered after the layer (before any other Conv/Linear) whose width matches the
    layer's outputs; it is applied with its running statistics (eval mode, per-channel affine). Layers without
    such a BatchNorm get ``relu(out)``. Assumes a ReLU-family nonlinearity follows, as in every model of the
    package; pooling is left out (it does not change which channels are dead).
    """
    order = list(model.named_modules())
    names = [n for n, _ in order]
    transforms = {}
    for name, layer in layers.items():
        width = layer.weight.shape[0]
        bn = None
        for _, m in order[names.index(name) + 1:]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                break
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_features == width:
                bn = m
                break

        def transform(out: Tensor, bn: nn.Module | None = bn) -> Tensor:
            if bn is None:
                return torch.relu(out)
            shape = [1, -1] + [1] * (out.ndim - 2)
            scale = (bn.weight if bn.affine else 1.0) / (bn.running_var + bn.eps).sqrt()
            shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
            # one fused pass and an in-place ReLU: the map is materialised once (scoring overhead)
            return torch.addcmul(shift.to(out.dtype).reshape(shape), out, scale.to(out.dtype).reshape(shape)).relu_()

        transforms[name] = transform
    return transforms


@contextmanager
def record_moments(
    layers: Mapping[str, nn.Module], num_classes: int, kind: FeatureKind = "quadratic",
    transforms: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
):
    """Register forward hooks on ``layers`` that accumulate :class:`ClassConditionalMoments`.

    Yields a ``(moments, set_targets)`` pair: call ``set_targets(y)`` before each forward pass;
    ``moments`` maps each layer name to its accumulator (created on the first batch, on the
    output's device). Hooks are removed on exit, also after an error.
    """
    moments: dict[str, ClassConditionalMoments] = {}
    state: dict[str, Tensor | None] = {"y": None}

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            y = state["y"]
            if y is None:
                return
            if transforms is not None and name in transforms:
                output = transforms[name](output.detach())
            z = component_features(output, kind)
            if name not in moments:
                moments[name] = ClassConditionalMoments.zeros(num_classes, z.shape[1], z.shape[2], z.device)
            moments[name].update(z, y.to(z.device))

        return hook

    def set_targets(y: Tensor | None) -> None:
        state["y"] = y

    handles = [m.register_forward_hook(make_hook(n)) for n, m in layers.items()]
    try:
        yield moments, set_targets
    finally:
        for h in handles:
            h.remove()


def collect_moments(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    kind: FeatureKind = "quadratic",
    forward: Callable[[Tensor], Any] | None = None,
    site: FeatureSite = "conv",
) -> dict[str, ClassConditionalMoments]:
    """One pass over ``batches`` of ``(inputs, targets)`` in eval mode, without gradients.

    Args:
        model: the network (its training mode is restored afterwards).
        layers: name -> module whose outputs are the components.
        batches: iterable of ``(x, y)`` with ``y (N,)`` integer class indices, already on the model's device.
        num_classes: K.
        kind: see :func:`component_features`.
        forward: how to run the model on ``x`` (default ``model(x)``).
        site: where a component's map is read: ``"conv"``, the layer's output before BatchNorm and the
            nonlinearity (the authors' pruning code); ``"activation"``, after them (``relu(BN(out))``, the map the
            next layer consumes, as the authors' unlearning code; see :func:`activation_transforms`).

    Returns:
        layer name -> moments.

    Raises:
        ValueError: if targets are not 1-D integer class indices.
    """
    was_training = model.training
    model.eval()
    try:
        if site not in ("conv", "activation"):
            raise ValueError(f"site must be 'conv' or 'activation', got {site!r}.")
        transforms = activation_transforms(model, layers) if site == "activation" else None
        with torch.no_grad(), record_moments(layers, num_classes, kind, transforms) as (moments, set_targets):
            for x, y in batches:
                check_targets(y)
                set_targets(y)
                (forward or model)(x)
    finally:
        model.train(was_training)
    return moments


def check_targets(y: Any) -> None:
    """Raise ``ValueError`` unless ``y`` is a 1-D integer tensor of class indices (metadata only, no sync)."""
    if not isinstance(y, Tensor) or y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        desc = f"{type(y).__name__} {tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(
            f"Calibration targets must be a 1-D integer tensor of class indices (N,), got {desc}. "
            "For one-hot or soft labels pass targets.argmax(1); for another batch structure "
            "give `inputs_targets` a function that returns (inputs, class_indices)."
        )
