"""FBA-Net's foreground/background-aware contrastive loss, mutual consistency, sharpening and ramp.

FBA-Net (Chung et al., MILLanD @ MICCAI 2023, arXiv 2306.15189), as released in
``cys1102/FBA-Net`` (``code/utils/losses.py``, ``code/networks/VNet.py``,
``code/train_fba*.py``, ``code/train_2d.py``); the pull/push losses come from C2AM
(Xie et al., CVPR 2022) with an added rank weight. See ``shared/specs/fba.md``.

Contrast (label free, so labelled and unlabelled samples take part alike). A small head
turns a decoder's logits ``z`` into a soft activation map ``a = sigmoid(BN(conv(z)))``
(:class:`ActivationMapHead`); embeddings are linear projections of that map alone,
``e = ReLU(Linear(a / P))`` (:class:`MapProjection`), never of decoder features (spec
ambiguities 1 and 2: the code, not the paper's wording). Nothing ties ``a`` to the
predicted foreground; its polarity is learned freely, as released (ambiguity 12). For
embeddings ``u``, ``v`` of the B samples of a batch::

    S(u, v)_mn = clamp(cos(u_m, v_n), 5e-4, 0.9995)                       (B x B)
    W_mn       = exp(-alpha * (rank of S_mn in row m, descending, 0-based) + alpha)
    Lmax(u)    = mean_{m,n} W_mn * -log S(u, u)_mn          alpha = 0.25, diagonal included
    Lmin(u, v) = mean_{m,n} W_mn * -log(1 - S(u, v)_mn)     alpha = 2.5

``W`` is a constant (no gradient through the sort); the top entry of each row weighs
``exp(alpha)`` (the released "rank - 1" offset, spec ambiguity 3, kept). Tied entries
of a row have equal losses, so how the sort breaks ties does not change the value.

* Binary (``num_classes == 2``, the 3D code): ``a`` has one channel; fg = ``a``, bg =
  ``1 - a``, separate projections; ``C = Lmax(fg) + Lmax(bg) + Lmin(fg, bg)``.
* Multi-class (``num_classes > 2``, the 2D code): ``a`` has one channel a class (conv
  C -> C, no BatchNorm), one shared projection, without the ``1/P`` scaling (as in the
  2D code's ``ContraModuleNew``); ``C = [sum_n Lmax(e_n) + sum_{m != n} Lmin(e_n, e_m)] / (C (C - 1))``.

Modes: ``"code"`` projects the full map (``Linear(P -> dim)``, so the input size is fixed,
as released); ``"pooled-map"`` (the spec's adaptation for tiles of any size) first
adaptive-average-pools the map to a fixed grid, then proceeds as ``"code"`` on the grid,
so both agree when the map already has the grid's size. The spec's ``"feature-pool"``
mode is not built.

Observed (not changed, for fidelity): with ``a / P`` the map moves each embedding by at
most ``|W| / P`` while the projection biases are free, so the biases alone can make all
fg embeddings parallel and orthogonal to all bg ones; on 16^3 toy volumes (SGD, lr 0.01)
every decoder's term sat at its clamp floor (``-log 0.9995 * mean W``, zero gradient)
after the first step. Ablations may want ``bias=False`` projections or a map-driven mode.

Mutual consistency (FBA-Net+, MC-Net+ style) between the softmax outputs ``p_d`` of the
decoders: ``sum_{i != j} mean((p_i - sharpen(p_j))^2)`` with
``sharpen(p) = p^(1/T) / (p^(1/T) + (1-p)^(1/T))`` per class channel, T = 0.1; targets are
not detached by default (as released; spec ambiguity 5). Its weight ramps up as
``w(t) = weight * exp(-5 (1 - c/40)^2)``, ``c = min(floor(t / 150), 40)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: How the activation map becomes a vector: the full map (as released) or pooled to a fixed grid.
ContrastMode = Literal["code", "pooled-map"]
#: Bounds of the clamped cosine similarity (released ``cos_simi``).
SIMILARITY_RANGE = (5e-4, 0.9995)
#: Rank-weight exponents of the pull (Lmax) and push (Lmin) terms.
ALPHA_MAX, ALPHA_MIN = 0.25, 2.5
#: Pooled-map grid side when none is given, by spatial dimensions (spec: 32x32, 16x16x16).
DEFAULT_GRID = {2: 32, 3: 16}


def clamped_cosine(u: Tensor, v: Tensor) -> Tensor:
    """``S_mn = clamp(cos(u_m, v_n), 5e-4, 0.9995)``: ``[B, D]``, ``[B, D]`` -> ``[B, B]``.

    A zero row (a ReLU embedding can be all zero) has cosine 0 with everything, so 5e-4.
    """
    similarity = F.normalize(u, dim=1) @ F.normalize(v, dim=1).T
    return similarity.clamp(*SIMILARITY_RANGE)


def rank_weights(similarity: Tensor, alpha: float) -> Tensor:
    """``W_mn = exp(-alpha * (r_mn - 1))``, ``r_mn`` the 0-based rank of ``S_mn`` in row m, descending.

    Shape: ``[..., B, B]`` -> the same, without gradient (rows: the second-to-last axis).
    """
    order = similarity.detach().argsort(dim=-1, descending=True)
    rank = order.argsort(dim=-1)  # position of column n in row m's descending order
    return torch.exp(-alpha * (rank - 1).to(similarity.dtype))


def similarity_max_loss(embeddings: Tensor, alpha: float = ALPHA_MAX) -> Tensor:
    """Lmax: pull the embeddings of one region view together across the batch.

    ``mean_{m,n} W_mn * -log S(u, u)_mn``, self pairs included (spec ambiguity 4).

    Shape: ``[B, D]`` -> scalar.
    """
    similarity = clamped_cosine(embeddings, embeddings)
    return (rank_weights(similarity, alpha) * -torch.log(similarity)).mean()


def similarity_min_loss(anchors: Tensor, others: Tensor, alpha: float = ALPHA_MIN) -> Tensor:
    """Lmin: push one region view (rows) away from another (columns).

    ``mean_{m,n} W_mn * -log(1 - S(u, v)_mn)``; with alpha = 2.5 the hardest pair of a row
    weighs about 12 times the next.

    Shape: ``[B, D]``, ``[B, D]`` -> scalar.
    """
    similarity = clamped_cosine(anchors, others)
    return (rank_weights(similarity, alpha) * -torch.log(1 - similarity)).mean()


def foreground_background_contrast(
    foreground: Tensor, background: Tensor, alpha_max: float = ALPHA_MAX, alpha_min: float = ALPHA_MIN
) -> Tensor:
    """Binary contrast ``Lmax(fg) + Lmax(bg) + Lmin(fg, bg)`` (rows of the push term: fg).

    Shape: ``[B, D]``, ``[B, D]`` -> scalar.
    """
    return (
        similarity_max_loss(foreground, alpha_max)
        + similarity_max_loss(background, alpha_max)
        + similarity_min_loss(foreground, background, alpha_min)
    )


def class_region_contrast(embeddings: Tensor, alpha_max: float = ALPHA_MAX, alpha_min: float = ALPHA_MIN) -> Tensor:
    """Multi-class contrast ``[sum_n Lmax(e_n) + sum_{m != n} Lmin(e_n, e_m)] / (C (C - 1))``.

    All ``C x C`` similarity matrices are computed at once (``[C, C, B, B]``); the
    diagonal blocks are the pull terms, the others the push terms.

    Shape: ``[B, C, D]`` (C >= 2 region views) -> scalar.
    """
    classes = embeddings.shape[1]
    unit = F.normalize(embeddings, dim=2)
    similarity = torch.einsum("bnd,cmd->nmbc", unit, unit).clamp(*SIMILARITY_RANGE)  # S(e_n, e_m) at [n, m]
    pull = (rank_weights(similarity, alpha_max) * -torch.log(similarity)).mean(dim=(2, 3))
    push = (rank_weights(similarity, alpha_min) * -torch.log(1 - similarity)).mean(dim=(2, 3))
    same = torch.eye(classes, dtype=torch.bool, device=embeddings.device)
    return (pull[same].sum() + push[~same].sum()) / (classes * (classes - 1))


def activation_map_size(input_size: Sequence[int]) -> tuple[int, ...]:
    """Spatial size of the activation map of logits of ``input_size`` (a 3x3 conv, stride 2, pad 1: ceil(s / 2))."""
    return tuple((int(side) + 1) // 2 for side in input_size)


class ActivationMapHead(nn.Module):
    """Logits -> soft region map ``a = sigmoid(BN(Conv(C -> R, k3, stride 2, pad 1, no bias)(z)))``.

    Binary (C = 2): R = 1 with BatchNorm (3D code). Multi-class: R = C without BatchNorm (2D code).

    Args:
        num_classes: C, the logit channels (>= 2).
        spatial_dims: 2 or 3.

    Shape:
        - Input: ``[B, C, *S]`` logits.
        - Output: ``[B, R, *ceil(S / 2)]`` in (0, 1).
    """

    def __init__(self, num_classes: int, spatial_dims: int) -> None:
        super().__init__()
        binary = num_classes == 2
        regions = 1 if binary else num_classes
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        self.conv = conv(num_classes, regions, 3, stride=2, padding=1, bias=False)
        self.norm = norm(regions) if binary else nn.Identity()

    def forward(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(self.norm(self.conv(logits)))


class MapProjection(nn.Module):
    """One region map -> embedding: ``ReLU(Linear(m / P))`` (``scale``) or ``ReLU(Linear(m))``.

    Args:
        num_values: P, values of a flattened map.
        dim: embedding size.
        scale: divide by P first (the binary 3D path does, the multi-class 2D path does not).

    Shape:
        - Input: ``[..., P]``.
        - Output: ``[..., dim]``, non-negative.
    """

    def __init__(self, num_values: int, dim: int, scale: bool = True) -> None:
        super().__init__()
        self.num_values = num_values
        self.scale = scale
        self.linear = nn.Linear(num_values, dim)

    def forward(self, values: Tensor) -> Tensor:
        if self.scale:
            values = values / self.num_values
        return F.relu(self.linear(values))


class FBContrastLoss(nn.Module):
    """FBA-Net's contrast term ``C_d`` of one decoder, from its logits (module docstring).

    It owns its weights (head and projections), so FBA-Net+ builds one per decoder.

    Args:
        num_classes: logit channels C (2: binary fg/bg path; more: per-class path).
        spatial_dims: 2 or 3.
        dim: embedding size (released: 128).
        mode: ``"code"`` (the full map; needs ``input_size``) or ``"pooled-map"``.
        input_size: spatial size of the logits, ``"code"`` mode only.
        grid: pooled-map grid side or sides (default 32 in 2D, 16 in 3D).
        alpha_max: rank-weight exponent of Lmax.
        alpha_min: rank-weight exponent of Lmin.

    Shape:
        - Input: logits ``[B, C, *S]`` (B >= 2 for a contrast across samples).
        - Output: scalar.

    Raises:
        ValueError: fewer than 2 classes, ``spatial_dims`` not 2 or 3, ``"code"`` mode
            without ``input_size``, or (in ``forward``) logits of another size than
            ``input_size`` in ``"code"`` mode.
    """

    def __init__(
        self,
        num_classes: int,
        spatial_dims: int,
        dim: int = 128,
        mode: ContrastMode = "code",
        *,
        input_size: Sequence[int] | None = None,
        grid: int | Sequence[int] | None = None,
        alpha_max: float = ALPHA_MAX,
        alpha_min: float = ALPHA_MIN,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"the fg/bg contrast needs at least 2 classes, got {num_classes}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.num_classes, self.spatial_dims, self.mode = num_classes, spatial_dims, mode
        self.alpha_max, self.alpha_min = alpha_max, alpha_min
        self.binary = num_classes == 2
        if mode == "code":
            if input_size is None or len(input_size) != spatial_dims:
                raise ValueError(f"mode 'code' needs the {spatial_dims}-D input_size of the logits, got {input_size}")
            self.map_size = activation_map_size(input_size)
            self.input_size: tuple[int, ...] | None = tuple(int(side) for side in input_size)
        elif mode == "pooled-map":
            side = DEFAULT_GRID[spatial_dims] if grid is None else grid
            self.map_size = (int(side),) * spatial_dims if isinstance(side, int) else tuple(int(s) for s in side)
            self.input_size = None
        else:
            raise ValueError(f"unknown contrast mode {mode!r}; choose 'code' or 'pooled-map'")
        values = math.prod(self.map_size)
        self.head = ActivationMapHead(num_classes, spatial_dims)
        if self.binary:
            self.foreground = MapProjection(values, dim, scale=True)
            self.background = MapProjection(values, dim, scale=True)
        else:
            self.projection = MapProjection(values, dim, scale=False)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, mode={self.mode!r}, map_size={self.map_size}"

    def activation_map(self, logits: Tensor) -> Tensor:
        """``[B, C, *S]`` logits -> ``[B, R, *ceil(S/2)]`` map (R = 1 binary, C multi-class)."""
        if self.input_size is not None and tuple(logits.shape[2:]) != self.input_size:
            raise ValueError(
                f"contrast mode 'code' was built for logits of size {self.input_size}, got "
                f"{tuple(logits.shape[2:])}; use mode 'pooled-map' for inputs of varying size"
            )
        return self.head(logits)

    def embed(self, activation: Tensor) -> Tensor:
        """Region embeddings from the activation map alone (the only path from logits to them).

        Shape: ``[B, R, *M]`` -> ``[B, 2, dim]`` (fg, bg) when binary, ``[B, C, dim]`` otherwise.
        """
        if self.mode == "pooled-map":
            pool = F.adaptive_avg_pool2d if self.spatial_dims == 2 else F.adaptive_avg_pool3d
            activation = pool(activation, self.map_size)
        flat = activation.flatten(2)  # [B, R, P]
        if self.binary:
            return torch.stack([self.foreground(flat[:, 0]), self.background(1 - flat[:, 0])], dim=1)
        return self.projection(flat)

    def contrast(self, embeddings: Tensor) -> Tensor:
        """The loss of region embeddings ``[B, R, dim]`` (binary: fg/bg terms; else per-class terms)."""
        if self.binary:
            return foreground_background_contrast(embeddings[:, 0], embeddings[:, 1], self.alpha_max, self.alpha_min)
        return class_region_contrast(embeddings, self.alpha_max, self.alpha_min)

    def forward(self, logits: Tensor) -> Tensor:
        return self.contrast(self.embed(self.activation_map(logits)))


def sharpen(probabilities: Tensor, temperature: float = 0.1) -> Tensor:
    """``p^(1/T) / (p^(1/T) + (1 - p)^(1/T))``, elementwise (each class channel on its own)."""
    power = 1.0 / temperature
    raised = probabilities**power
    return raised / (raised + (1 - probabilities) ** power)


def mutual_consistency(
    probabilities: Sequence[Tensor], temperature: float = 0.1, detach_targets: bool = False
) -> Tensor:
    """``sum_{i != j} mean((p_i - sharpen(p_j))^2)`` over ordered decoder pairs (6 for 3 decoders).

    Args:
        probabilities: softmax outputs ``[B, C, *S]`` of each decoder (all samples).
        temperature: sharpening temperature T.
        detach_targets: stop the gradient through the sharpened targets (released: no).

    Returns:
        A scalar; 0 for a single decoder.
    """
    targets = [sharpen(p, temperature) for p in probabilities]
    if detach_targets:
        targets = [target.detach() for target in targets]
    total = probabilities[0].new_zeros(())
    for i, prediction in enumerate(probabilities):
        for j, target in enumerate(targets):
            if i != j:
                total = total + F.mse_loss(prediction, target)
    return total


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """``exp(-5 (1 - c / L)^2)`` with ``c`` clipped to ``[0, L]``; 1 when ``L == 0`` (Laine & Aila 2017)."""
    if rampup_length == 0:
        return 1.0
    phase = 1.0 - min(max(float(current), 0.0), rampup_length) / rampup_length
    return float(math.exp(-5.0 * phase * phase))


def consistency_weight(
    iteration: int, weight: float = 1.0, rampup_length: float = 40.0, iterations_per_unit: int = 150
) -> float:
    """``w(t) = weight * sigmoid_rampup(floor(t / 150), 40)``: about 0.0067 at t = 0, ``weight`` from t = 6000."""
    return weight * sigmoid_rampup(iteration // iterations_per_unit, rampup_length)
