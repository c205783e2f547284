"""FBA-Net's foreground/background-aware contrastive loss, mutual consistency, sharpening and ramp.

FBA-Net (Chung et al., MILLanD @ MICCAI 2023, arXiv 2306.15189), as released in
``cys1102/FBA-Net`` (``code/utils/losses.py``, ``code/networks/VNet.py``,
``code/train_fba*.py``, ``code/train_2d.py``); the pull/push losses come from C2AM
(Xie et al., CVPR 2022) with an added rank weight.

Contrast (label free, so labelled and unlabelled samples take part alike). A small head
turns a decoder's logits ``z`` into a soft activation map ``a = sigmoid(BN(conv(z)))``
(:class:`ActivationMapHead`); embeddings are linear projections of that map alone,
``e = ReLU(Linear(a / P))`` (:class:`MapProjection`), never of pooled decoder features:
geocl follows the released code here (its head reads the logits, its embeddings project
the map), not a reading of the paper's words as pooled features. Nothing ties ``a`` to the
predicted foreground; its polarity is learned freely, as released (the head is a free
convolution of the logits). For embeddings ``u``, ``v`` of the B samples of a batch::

    S(u, v)_mn = clamp(cos(u_m, v_n), 5e-4, 0.9995)                       (B x B)
    W_mn       = exp(-alpha * (rank of S_mn in row m, descending, 0-based) + alpha)
    Lmax(u)    = mean_{m,n} W_mn * -log S(u, u)_mn          alpha = 0.25, diagonal included
    Lmin(u, v) = mean_{m,n} W_mn * -log(1 - S(u, v)_mn)     alpha = 2.5

``W`` is a constant (no gradient through the sort); the top entry of each row weighs
``exp(alpha)`` (the released "rank - 1" offset, ``code/utils/losses.py``, kept). Tied entries
of a row have equal losses, so how the sort breaks ties does not change the value.

* Binary (``num_classes == 2``, the 3D code): ``a`` has one channel; fg = ``a``, bg =
  ``1 - a``, separate projections; ``C = Lmax(fg) + Lmax(bg) + Lmin(fg, bg)``.
* Multi-class (``num_classes > 2``, the 2D code): ``a`` has one channel a class (conv
  C -> C, no BatchNorm), one shared projection, without the ``1/P`` scaling (as in the
  2D code's ``ContraModuleNew``); ``C = [sum_n Lmax(e_n) + sum_{m != n} Lmin(e_n, e_m)] / (C (C - 1))``.

Modes: ``"code"`` projects the full map (``Linear(P -> dim)``, so the input size is fixed,
as released); ``"pooled-map"`` (geocl's adaptation for tiles of any size, not in the
released code) first adaptive-average-pools the map to a fixed grid, then proceeds as
``"code"`` on the grid, so both agree when the map already has the grid's size. The other
adaptation, contrasting features pooled under the map as C2AM does (``"feature-pool"``),
is :class:`FeaturePoolContrast` (the label-free pretraining's), on encoder features
rather than decoder features.

Variants (``variant``):

* ``"released"``: the projections above, exactly as released. With ``a / P`` the map moves
  each embedding by at most ``|W| / P`` while the projection biases are free, so the
  biases alone make all fg embeddings parallel and orthogonal to all bg ones: on toy
  volumes every decoder's term sits at its clamp floor (``-log 0.9995 * mean W``, zero
  gradient) after one SGD step (the collapse is faithful: the released 3D training does
  the same). In the multi-class path the projection is shared, so the term cannot
  collapse, but it starts near ``-log 5e-4`` per push pair and its gradient on the logits
  dwarfs the Dice term's (see :mod:`geocl.finetune.semi_supervised` for the weighting).
* ``"stable"`` (geocl's default): the bias path is removed. One projection without bias,
  ``e = ReLU(W m)``, serves every region view (fg and bg alike in the binary path), on the
  map itself (no ``1 / P``: cosines are scale-free, so the scaling only mattered against
  the bias). Why it cannot collapse: fg and bg embeddings are now the same function of
  ``a`` and ``1 - a``; a map that is uniform over the image (``a = c``) gives
  ``bg = ReLU(W (1 - c) 1) ∝ fg``, cosine 1, the *largest* push loss, and a map at 0 or 1
  everywhere gives a zero embedding, cosine 0 with everything, the largest pull loss
  (``-log 5e-4``). The loss only falls when the map splits each image into two regions
  in the same way across the batch, i.e. through what the network predicts. (A map that
  were the same spatial pattern for every image, whatever it shows, would also lower it;
  the segmenter's supervised term stands against that.)

Mutual consistency (FBA-Net+, MC-Net+ style) between the softmax outputs ``p_d`` of the
decoders: ``sum_{i != j} mean((p_i - sharpen(p_j))^2)`` with
``sharpen(p) = p^(1/T) / (p^(1/T) + (1-p)^(1/T))`` per class channel, T = 0.1; targets are
not detached by default (as released, ``code/train_fba_plus.py``; ``detach_targets``
detaches them). Its weight ramps up as
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
#: The projection of the maps: the released one (free biases) or one shared, bias-free (module docstring).
ContrastVariant = Literal["released", "stable"]
#: Bounds of the clamped cosine similarity (released ``cos_simi``).
SIMILARITY_RANGE = (5e-4, 0.9995)
#: Rank-weight exponents of the pull (Lmax) and push (Lmin) terms.
ALPHA_MAX, ALPHA_MIN = 0.25, 2.5
#: Pooled-map grid side when none is given, by spatial dimensions (geocl's choice: 32x32, 16x16x16).
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

    ``mean_{m,n} W_mn * -log S(u, u)_mn``, self pairs included, as released (their
    near-zero loss slightly dilutes the mean).

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


def instance_foreground_contrast(foreground: Tensor, background: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent over foregrounds: the two views of a tile have each other's foreground as their only
    positive; every other foreground and every background of the batch, their own included, is a
    negative. geocl's harder pretext for :mod:`geocl.methods.fba_pretrain`, not FBA-Net's.

    Row ``i`` and row ``i + B`` are the two views of one tile (first views, then second views)::

        z = normalise(fg), u = normalise(bg)
        loss_i = -log( exp(z_i.z_p / t) / (sum_{k != i} exp(z_i.z_k / t) + sum_k exp(z_i.u_k / t)) ),  p = i +- B

    Shape: ``[2B, D]``, ``[2B, D]`` -> scalar (mean over the 2B views).
    """
    views = len(foreground)
    if views < 2 or views % 2:
        raise ValueError(f"need the two views of each tile, first views then second views; got {views} rows")
    fg, bg = F.normalize(foreground, dim=1), F.normalize(background, dim=1)
    own = torch.eye(views, dtype=torch.bool, device=fg.device)
    logits = torch.cat([(fg @ fg.T).masked_fill(own, float("-inf")), fg @ bg.T], dim=1) / temperature
    partner = (torch.arange(views, device=fg.device) + views // 2) % views
    return F.cross_entropy(logits, partner)


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
        bias: a bias in the linear layer (released: yes; the ``stable`` variant: no).

    Shape:
        - Input: ``[..., P]``.
        - Output: ``[..., dim]``, non-negative.
    """

    def __init__(self, num_values: int, dim: int, scale: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.num_values = num_values
        self.scale = scale
        self.linear = nn.Linear(num_values, dim, bias=bias)

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
        variant: ``"stable"`` (one bias-free projection for every region view) or
            ``"released"`` (module docstring).

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
        variant: ContrastVariant = "released",
    ) -> None:
        super().__init__()
        if variant not in ("released", "stable"):
            raise ValueError(f"unknown contrast variant {variant!r}; choose 'released' or 'stable'")
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
        self.variant = variant
        self._last_batch = 2
        self.head = ActivationMapHead(num_classes, spatial_dims)
        if variant == "stable":
            self.projection = MapProjection(values, dim, scale=False, bias=False)
        elif self.binary:
            self.foreground = MapProjection(values, dim, scale=True)
            self.background = MapProjection(values, dim, scale=True)
        else:
            self.projection = MapProjection(values, dim, scale=False)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, mode={self.mode!r}, map_size={self.map_size}, variant={self.variant!r}"

    def floor(self) -> float:
        """The smallest value the term can take (every clamp at its bound), given its rank weights.

        Binary: ``-log(0.9995) * 2 * mean W(alpha_max) - log(1 - 5e-4) * mean W(alpha_min)``;
        multi-class: the same per pull and push pair, normalised as the term. The rank
        weights of a row are ``exp(-alpha (r - 1))`` for ``r = 0 .. B-1``, so their mean
        depends on the batch size: this is the floor for the last batch seen.
        """
        batch = self._last_batch
        ranks = torch.arange(batch, dtype=torch.float64) - 1
        pull = float(torch.exp(-self.alpha_max * ranks).mean()) * -math.log(SIMILARITY_RANGE[1])
        push = float(torch.exp(-self.alpha_min * ranks).mean()) * -math.log(1 - SIMILARITY_RANGE[0])
        if self.binary:
            return 2 * pull + push
        classes = self.num_classes
        return (classes * pull + classes * (classes - 1) * push) / (classes * (classes - 1))

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
            if self.spatial_dims == 2:
                height, width = self.map_size
                activation = F.adaptive_avg_pool2d(activation, (height, width))
            else:
                depth, height, width = self.map_size
                activation = F.adaptive_avg_pool3d(activation, (depth, height, width))
        flat = activation.flatten(2)  # [B, R, P]
        if self.binary:
            foreground, background = flat[:, 0], 1 - flat[:, 0]
            if self.variant == "stable":
                return self.projection(torch.stack([foreground, background], dim=1))
            return torch.stack([self.foreground(foreground), self.background(background)], dim=1)
        return self.projection(flat)

    def contrast(self, embeddings: Tensor) -> Tensor:
        """The loss of region embeddings ``[B, R, dim]`` (binary: fg/bg terms; else per-class terms)."""
        if self.binary:
            return foreground_background_contrast(embeddings[:, 0], embeddings[:, 1], self.alpha_max, self.alpha_min)
        return class_region_contrast(embeddings, self.alpha_max, self.alpha_min)

    def forward(self, logits: Tensor) -> Tensor:
        self._last_batch = int(logits.shape[0])
        return self.contrast(self.embed(self.activation_map(logits)))


class FeaturePoolContrast(nn.Module):
    """The fg/bg contrast without labels nor logits: ``feature-pool``, geocl's adaptation in C2AM's form.

    For the label-free pretraining (:mod:`geocl.methods.fba_pretrain`). A head turns the
    encoder's own feature map ``F`` into a class-agnostic activation map
    ``a = sigmoid(BN(Conv1x1(F)))`` (C2AM, Xie et al., CVPR 2022, arXiv 2203.13505; FBA's
    head on the logits, moved onto the features), which splits each image into a
    foreground and a background view; the views pool the features they cover::

        f = sum(a F) / sum(a)        b = sum((1 - a) F) / sum(1 - a)      (over the map's positions)
        fg = ReLU(W f), bg = ReLU(W b)                                    (one projection, no bias)
        loss = Lmax(fg) + Lmax(bg) + Lmin(fg, bg)                         (FBA's terms, rank weights)

    Why it cannot collapse: fg and bg pass the same bias-free projection, so nothing but
    the pooled features can tell them apart. A map that does not split the image
    (``a`` uniform: f = b) and features that do not vary over the image (F constant: f =
    b whatever ``a``) both give cosine 1 between fg and bg, the *largest* push loss; a
    zero embedding gives cosine 0 with everything, the largest pull loss. The loss falls
    only when the map separates image parts whose features differ, in the same way across
    the batch. (Which part is called foreground is arbitrary, as with the released FBA-Net
    map, which nothing ties to the predicted foreground; the contrast is symmetric in it up
    to the rank weights.)

    Args:
        channels: D, channels of the feature map.
        dim: embedding size (released: 128).
        spatial_dims: 2 or 3.
        alpha_max, alpha_min: rank-weight exponents of Lmax and Lmin.

    Shape:
        - Input: features ``[B, D, *S]`` (B >= 2).
        - Output: scalar.
    """

    def __init__(
        self,
        channels: int,
        dim: int = 128,
        spatial_dims: int = 2,
        *,
        alpha_max: float = ALPHA_MAX,
        alpha_min: float = ALPHA_MIN,
    ) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        self.head = nn.Sequential(conv(channels, 1, 1, bias=False), norm(1))
        self.projection = nn.Linear(channels, dim, bias=False)
        self.alpha_max, self.alpha_min = alpha_max, alpha_min

    def activation_map(self, features: Tensor) -> Tensor:
        """``[B, D, *S]`` -> ``[B, 1, *S]`` in (0, 1)."""
        return torch.sigmoid(self.head(features))

    @staticmethod
    def pool(features: Tensor, activation: Tensor) -> tuple[Tensor, Tensor]:
        """The fg and bg views of ``features`` ``[B, D, *S]`` under ``activation`` ``[B, 1, *S]``: two ``[B, D]``."""
        flat, weights = features.flatten(2), activation.flatten(2)  # [B, D, P], [B, 1, P]
        foreground = (flat * weights).sum(2) / weights.sum(2).clamp_min(1e-6)
        background = (flat * (1 - weights)).sum(2) / (1 - weights).sum(2).clamp_min(1e-6)
        return foreground, background

    def embed(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(fg, bg, a)``: embeddings ``[B, dim]`` each and the activation map ``[B, 1, *S]``."""
        activation = self.activation_map(features)
        foreground, background = self.pool(features, activation)
        return F.relu(self.projection(foreground)), F.relu(self.projection(background)), activation

    def forward(self, features: Tensor) -> Tensor:
        foreground, background, _ = self.embed(features)
        return foreground_background_contrast(foreground, background, self.alpha_max, self.alpha_min)


def released_dice_loss(probabilities: Tensor, masks: Tensor, ignore_index: int = -100) -> Tensor:
    """The released 2D Dice (``DiceLoss`` of FBA-Net's ``code/utils/losses.py``): no factor 2, squares below.

    ``mean_k [1 - sum(s_k t_k) / (sum s_k^2 + sum t_k^2 + 1e-10)]`` over all classes k
    (background included), the sums over the whole batch. Pixels at ``ignore_index`` count
    nowhere (the released code has no ignore index; on masks without one it is the
    released formula exactly).

    ``ignore_index`` defaults to geocl's (``geocl.data.tile_dataset.IGNORE_INDEX``, -100).

    Shape: probabilities ``[B, K, *S]``, masks ``[B, *S]`` (class indices) -> scalar.
    """
    classes = probabilities.shape[1]
    valid = (masks != ignore_index).unsqueeze(1).to(probabilities.dtype)
    target = F.one_hot(torch.where(masks == ignore_index, 0, masks), classes).movedim(-1, 1).to(probabilities.dtype)
    scores, target = probabilities * valid, target * valid
    dims = [0, *range(2, probabilities.dim())]
    intersection = (scores * target).sum(dims)
    union = (scores * scores).sum(dims) + (target * target).sum(dims) + 1e-10
    return (1 - intersection / union).mean()


def sharpen(probabilities: Tensor, temperature: float = 0.1) -> Tensor:
    """``p^(1/T) / (p^(1/T) + (1 - p)^(1/T))``, elementwise (each class channel on its own)."""
    power = 1.0 / temperature
    raised = probabilities**power
    return raised / (raised + (1 - probabilities) ** power)


def sharpen_classes(probabilities: Tensor, temperature: float = 0.1, dim: int = 1) -> Tensor:
    """``p_k^(1/T) / sum_j p_j^(1/T)`` over the class axis ``dim``: a sharpened distribution.

    For two classes it equals :func:`sharpen` (``p^(1/T) / (p^(1/T) + (1 - p)^(1/T))``);
    with more, :func:`sharpen` of each channel on its own sends every channel of an
    uncertain pixel (all ``p_k < 0.5``) towards 0, a target that is no distribution. The
    power is taken in log space (``softmax(log p / T)``), so small probabilities do not
    underflow to ``0 / 0``.
    """
    return torch.softmax(torch.log(probabilities.clamp_min(1e-12)) / temperature, dim=dim)


#: How the consistency targets are sharpened: each class channel alone (released) or over the classes.
Sharpening = Literal["channel", "classes"]


def mutual_consistency(
    probabilities: Sequence[Tensor],
    temperature: float = 0.1,
    detach_targets: bool = False,
    sharpening: Sharpening = "channel",
) -> Tensor:
    """``sum_{i != j} mean((p_i - sharpen(p_j))^2)`` over ordered decoder pairs (6 for 3 decoders).

    Args:
        probabilities: softmax outputs ``[B, C, *S]`` of each decoder (all samples).
        temperature: sharpening temperature T.
        detach_targets: stop the gradient through the sharpened targets (released: no).
        sharpening: ``"channel"`` (:func:`sharpen`, released) or ``"classes"``
            (:func:`sharpen_classes`; the same for two classes).

    Returns:
        A scalar; 0 for a single decoder.
    """
    sharpener = sharpen if sharpening == "channel" else sharpen_classes
    targets = [sharpener(p, temperature) for p in probabilities]
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
