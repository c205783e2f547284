"""Multi-band batch augmentations for contrastive views, on kornia.

Inputs are batches of normalised tiles, float tensors ``[B, C, H, W]`` with any band count
``C >= 1`` and per-band mean ~0 and std ~1. Everything runs batched on the batch's device,
with per-sample random parameters drawn from torch's global generators, so
``torch.manual_seed`` before a call makes its output reproducible (on one device and dtype).

kornia provides the band-agnostic pieces (:class:`~kornia.augmentation.RandomResizedCrop`,
flips, :class:`~kornia.augmentation.RandomGaussianBlur`,
:class:`~kornia.augmentation.RandomGaussianNoise`). Two are written here because kornia lacks
a usable version for normalised multi-band data:

* :class:`RandomRot90`: kornia's ``RandomRotation90`` warps with bilinear interpolation
  (values change by float noise) and rounds a continuous draw, so ``k = 0`` and ``k = 3`` come
  out half as often as ``1`` and ``2``. Overhead imagery has no "up", so all four
  orientations should be equally likely and pixel values untouched.
* :class:`RandomBandBrightnessContrast`: kornia's colour jitters assume RGB in ``[0, 1]``
  (they clamp, and saturation/hue need three channels). Normalised bands are centred on 0
  and need per-band jitter instead.

Parameter sampling follows kornia: on the CPU unless the module was moved with
``.to(device)``, in which case it happens on that device (as it does when the augmentation
is a submodule of a Lightning module). Both are correct; sampling on the batch's device
avoids copying the noise field.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping
from typing import Any

import kornia.augmentation as K
import torch
from kornia.augmentation.random_generator import RandomGeneratorBase
from torch import Tensor, nn

from geocl.errors import GeoclError
from geocl.recipes.errors import validated_section
from geocl.recipes.schema import AugmentConfig

__all__ = [
    "MultiBandViewAugmentation",
    "RandomBandBrightnessContrast",
    "RandomRot90",
    "TwoViews",
    "blur_kernel_size",
    "crop_scale_mismatch",
    "photometric_only",
]

#: Smallest accepted view side (px): below it the blur kernel and crops degenerate.
MIN_VIEW_SIZE = 8

#: How far (a factor either way) the typical view may zoom its tile before
#: :func:`crop_scale_mismatch` speaks.
ZOOM_TOLERANCE = 1.5


def crop_scale_mismatch(tile_side: int, view_size: int, scale: tuple[float, float]) -> str | None:
    """Say when the crops of ``augment.scale`` change the data's resolution in the views; None when they keep it.

    A crop of area share ``s`` of a ``tile_side`` tile has side ``sqrt(s) x tile_side``
    and is resized to ``view_size``: objects look ``sqrt(s) x tile_side / view_size``
    times smaller than in the tile. Finetuning and the probes read tiles at their own
    resolution, so views that shrink (or enlarge) everything train features for another
    scale. Measured on the urban scene (256-px tiles, 96-px views, 100 SimCLR steps,
    frozen probe over 6 label subsets): ``[0.2, 1.0]`` (shrinks 1.2-2.7x) scored like a
    random encoder; ``[0.05, 0.5]`` (0.6-1.9x) was +1.9 mIoU points [+1.0, +2.8] above it.

    Args:
        tile_side: side of the training tiles, px.
        view_size: side of the views, px.
        scale: the crop area range, shares of the tile area.

    Returns:
        One line naming ``augment.scale``, the zoom range and a range that keeps the
        resolution, when the geometric middle of the zoom range is off by more than
        :data:`ZOOM_TOLERANCE`; else None.
    """
    low, high = (math.sqrt(share) * tile_side / view_size for share in scale)
    middle = math.sqrt(low * high)
    if 1 / ZOOM_TOLERANCE <= middle <= ZOOM_TOLERANCE:
        return None
    native = (view_size / tile_side) ** 2  # the share whose crop is the view's side
    advice = (round(0.4 * native, 2), round(min(1.0, 3.5 * native), 2))
    way = "shrink" if middle > 1 else "enlarge"
    return (
        f"augment.scale [{scale[0]:g}, {scale[1]:g}] on {tile_side}-px tiles: the {view_size}-px views {way} objects "
        f"{low:.1f}-{high:.1f}x, while finetuning and the probes read tiles at their own resolution; "
        f"a range near [{advice[0]:g}, {advice[1]:g}] keeps it (sqrt(scale) x {tile_side} ~ {view_size})"
    )


def blur_kernel_size(size: int) -> int:
    """Side of the Gaussian blur kernel used for views of ``size`` px.

    About 10 % of the view side, made odd, and at least 3: ``2 * floor(0.05 * size) + 1``
    (96 -> 9, 128 -> 13, 224 -> 23, as in SimCLR's 10 % rule). With the largest sigma (2 px
    by default) a 9 px kernel truncates the Gaussian at 2 sigma; that keeps the blur local
    on small views, which is the point of scaling the kernel with the view.

    Args:
        size: view side, px.

    Returns:
        odd kernel side, px.
    """
    return max(3, 2 * int(0.05 * size) + 1)


class _Rot90Generator(RandomGeneratorBase):
    """Draw ``k`` uniformly in ``{0, 1, 2, 3}`` per sample (key ``k``, long, shape ``[B]``)."""

    def __repr__(self) -> str:
        return "k~U{0,1,2,3}"

    def make_samplers(self, device: torch.device, dtype: torch.dtype) -> None:
        # torch.randint needs no persistent sampler; the device is read in forward.
        pass

    def forward(self, batch_shape: tuple[int, ...], same_on_batch: bool = False) -> dict[str, Tensor]:
        batch_size = batch_shape[0]
        draws = 1 if same_on_batch else batch_size
        k = torch.randint(0, 4, (draws,), device=self.device)
        return {"k": k.expand(batch_size)}


class RandomRot90(K.GeometricAugmentationBase2D):
    """Rotate each sample by ``k * 90`` degrees, ``k`` uniform in ``{0, 1, 2, 3}``.

    Exact: pixels are moved, never interpolated, so every output pixel is an input pixel
    (the same as ``torch.rot90(image, k, dims=(-2, -1))``, counter-clockwise as displayed).
    Works for any band count. The drawn ``k`` is recorded in ``self._params["k"]`` and the
    gate in ``self._params["batch_prob"]`` (a skipped sample is returned unchanged).

    Args:
        p: probability of rotating a sample (with ``k = 0`` still possible once applied).
        same_on_batch: draw one ``k`` for the whole batch.
        keepdim: kornia's flag: keep a ``[C, H, W]`` input unbatched.

    Shape:
        - Input: ``[B, C, H, W]`` with ``H == W`` (a quarter turn of a non-square tile would
          change its shape).
        - Output: ``[B, C, H, W]``, same dtype and device.
    """

    def __init__(self, p: float = 0.5, same_on_batch: bool = False, keepdim: bool = False) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomRot90: p must be in [0, 1], got {p}")
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        self._param_generator = _Rot90Generator()

    @staticmethod
    def _check_square(input: Tensor) -> int:
        height, width = input.shape[-2:]
        if height != width:
            raise ValueError(f"RandomRot90 needs square images, got {height}x{width}")
        return height

    def compute_transformation(self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any]) -> Tensor:
        # Pixel-coordinate matrix (x right, y down) of one quarter turn on an n x n grid:
        # (x, y) -> (y, n - 1 - x); k turns are its k-th power.
        n = self._check_square(input)
        quarter = torch.tensor(
            [[0.0, 1.0, 0.0], [-1.0, 0.0, n - 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64, device=input.device
        )
        powers = torch.stack([torch.linalg.matrix_power(quarter, k) for k in range(4)])
        k = params["k"].to(input.device).long()
        return powers[k].to(input.dtype)

    def apply_transform(
        self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any], transform: Tensor | None = None
    ) -> Tensor:
        n = self._check_square(input)
        batch, bands = input.shape[:2]
        # One gather with a per-sample index map instead of a Python loop over samples:
        # rotating the flat pixel index by each k gives where every output pixel comes from.
        flat = torch.arange(n * n, device=input.device).view(n, n)
        maps = torch.stack([torch.rot90(flat, k, dims=(-2, -1)) for k in range(4)]).view(4, n * n)
        index = maps[params["k"].to(input.device).long()]
        out = input.reshape(batch, bands, n * n).gather(2, index[:, None, :].expand(batch, bands, n * n))
        return out.view_as(input)


class _BandJitterGenerator(RandomGeneratorBase):
    """Draw per-sample, per-band contrast factors and brightness shifts.

    Keys: ``contrast_factor`` and ``brightness_shift``, float, shape ``[B, C]``.
    """

    def __init__(self, brightness: float, contrast: float, same_for_all_bands: bool) -> None:
        super().__init__()
        self.brightness = brightness
        self.contrast = contrast
        self.same_for_all_bands = same_for_all_bands

    def __repr__(self) -> str:
        return f"brightness={self.brightness}, contrast={self.contrast}, same_for_all_bands={self.same_for_all_bands}"

    def make_samplers(self, device: torch.device, dtype: torch.dtype) -> None:
        # torch.rand needs no persistent sampler; device and dtype are read in forward.
        pass

    def forward(self, batch_shape: tuple[int, ...], same_on_batch: bool = False) -> dict[str, Tensor]:
        batch_size, bands = batch_shape[0], batch_shape[1]
        draws = 1 if same_on_batch else batch_size
        band_draws = 1 if self.same_for_all_bands else bands
        # Both fields are always drawn so the random stream does not depend on which is zero.
        u = torch.rand((2, draws, band_draws), device=self.device, dtype=self.dtype) * 2.0 - 1.0
        contrast_factor = 1.0 + u[0] * self.contrast
        brightness_shift = u[1] * self.brightness
        return {
            "contrast_factor": contrast_factor.expand(batch_size, bands),
            "brightness_shift": brightness_shift.expand(batch_size, bands),
        }


class RandomBandBrightnessContrast(K.IntensityAugmentationBase2D):
    r"""Per-band brightness and contrast jitter for normalised multi-band tiles.

    For each sample and band ``b``:
    :math:`x_b \leftarrow (x_b - \bar{x}_b)\,c_b + \bar{x}_b + s_b` with the band's spatial
    mean :math:`\bar{x}_b` over this sample, contrast factor :math:`c_b \sim U(1 - contrast,
    1 + contrast)` and shift :math:`s_b \sim U(-brightness, brightness)`. The units are those
    of the normalised data (one unit = one dataset std of the band). Nothing is clamped:
    normalised data has no fixed range. Independent factors per band also perturb the
    relations between bands, the multi-band analogue of colour jitter.

    Args:
        brightness: half-width of the shift range, normalised units, ``>= 0``.
        contrast: half-width of the contrast-factor range around 1, in ``[0, 1]`` (factors
            stay ``>= 0``, so a band is never inverted).
        same_for_all_bands: draw one factor and one shift per sample, shared by its bands.
        p: probability of jittering a sample.
        same_on_batch: share the draws across the batch.
        keepdim: kornia's flag: keep a ``[C, H, W]`` input unbatched.

    Shape:
        - Input: ``[B, C, H, W]``, any ``C >= 1``.
        - Output: ``[B, C, H, W]``, same dtype and device. The draws are recorded in
          ``self._params["contrast_factor"]`` and ``["brightness_shift"]``, ``[B, C]``.
    """

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        same_for_all_bands: bool = False,
        p: float = 1.0,
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomBandBrightnessContrast: p must be in [0, 1], got {p}")
        if not (math.isfinite(brightness) and brightness >= 0.0):
            raise ValueError(f"RandomBandBrightnessContrast: brightness must be >= 0, got {brightness}")
        if not 0.0 <= contrast <= 1.0:
            raise ValueError(f"RandomBandBrightnessContrast: contrast must be in [0, 1], got {contrast}")
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        self._param_generator = _BandJitterGenerator(brightness, contrast, same_for_all_bands)

    def apply_transform(
        self, input: Tensor, params: dict[str, Tensor], flags: dict[str, Any], transform: Tensor | None = None
    ) -> Tensor:
        factor = params["contrast_factor"].to(device=input.device, dtype=input.dtype)[..., None, None]
        shift = params["brightness_shift"].to(device=input.device, dtype=input.dtype)[..., None, None]
        mean = input.mean(dim=(-2, -1), keepdim=True)
        return (input - mean) * factor + mean + shift


# ---------------------------------------------------------------------------------------
# The composed view pipeline
# ---------------------------------------------------------------------------------------


def _fail(name: str, message: str) -> GeoclError:
    return GeoclError(message, key=f"augment.{name}")


class MultiBandViewAugmentation(nn.Module):
    """One random view per input tile: a SimCLR-like recipe adapted to multi-band data.

    Steps, in order (each sample draws its own parameters):

    1. :class:`~kornia.augmentation.RandomResizedCrop` to ``size x size`` (always applied;
       bilinear, half-pixel grid as ``F.interpolate(align_corners=False)``).
    2. horizontal flip (``hflip_p``), vertical flip (``vflip_p``), :class:`RandomRot90`
       (``rot90_p``): overhead imagery has no preferred orientation, so all eight dihedral
       poses are reachable.
    3. :class:`RandomBandBrightnessContrast` (``jitter_p``), the stand-in for colour jitter;
       SimCLR's grayscale step is dropped (there is no luminance of arbitrary bands).
    4. :class:`~kornia.augmentation.RandomGaussianBlur` (``blur_p``), kernel side
       :func:`blur_kernel_size` of ``size`` (~10 %, odd), sigma drawn in ``blur_sigma`` px,
       reflect padding.
    5. :class:`~kornia.augmentation.RandomGaussianNoise` (``noise_p``), additive, std
       ``noise_std`` in normalised units (sensor noise).

    Steps 1-2 live in ``self.geometric`` and 3-5 in ``self.photometric`` (both
    :class:`~kornia.augmentation.AugmentationSequential`); an op whose probability or
    magnitude is 0 is left out rather than run as a no-op.

    Args:
        size: output view side, px, ``>= 8``.
        scale: range of the crop area as a fraction of the tile area, ``0 < a <= b <= 1``.
        ratio: range of the crop aspect ratio (width / height), ``0 < a <= b``.
        hflip_p: probability of a horizontal flip.
        vflip_p: probability of a vertical flip.
        rot90_p: probability of a random quarter-turn rotation.
        jitter_p: probability of the per-band brightness/contrast jitter.
        brightness: jitter shift half-range, normalised units (band std), ``>= 0``.
        contrast: jitter contrast-factor half-range around 1, in ``[0, 1]``.
        blur_p: probability of a Gaussian blur.
        blur_sigma: range of the blur sigma, px, ``0 < a <= b``.
        noise_p: probability of additive Gaussian noise.
        noise_std: noise std, normalised units, ``>= 0``.

    Raises:
        GeoclError: a value out of range (key ``augment.<name>``).

    Shape:
        - Input: ``[B, C, H, W]`` float, any ``C >= 1``, ``H, W`` any (the crop resizes).
        - Output: ``[B, C, size, size]``, same dtype and device.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip_p: float = 0.5,
        vflip_p: float = 0.5,
        rot90_p: float = 0.5,
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        noise_p: float = 0.2,
        noise_std: float = 0.05,
    ) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise _fail("size", f"expected an integer number of pixels, got {size!r}")
        if size < MIN_VIEW_SIZE:
            raise _fail("size", f"must be >= {MIN_VIEW_SIZE} px, got {size}")
        # one validator for recipes and Python callers: the recipe schema's augment section
        config = validated_section(
            "augment",
            AugmentConfig,
            {
                "scale": scale,
                "ratio": ratio,
                "hflip_p": hflip_p,
                "vflip_p": vflip_p,
                "rot90_p": rot90_p,
                "jitter_p": jitter_p,
                "brightness": brightness,
                "contrast": contrast,
                "blur_p": blur_p,
                "blur_sigma": blur_sigma,
                "noise_p": noise_p,
                "noise_std": noise_std,
            },
        )
        scale, ratio, blur_sigma = config.scale, config.ratio, config.blur_sigma
        brightness, contrast, noise_std = config.brightness, config.contrast, config.noise_std
        probs = {
            name: getattr(config, name) for name in ("hflip_p", "vflip_p", "rot90_p", "jitter_p", "blur_p", "noise_p")
        }

        self.size = int(size)
        self.blur_kernel_size = blur_kernel_size(self.size)
        self._hparams: dict[str, Any] = {
            "scale": scale,
            "ratio": ratio,
            **probs,
            "brightness": brightness,
            "contrast": contrast,
            "blur_sigma": blur_sigma,
            "noise_std": noise_std,
        }

        geometric: list[nn.Module] = [
            K.RandomResizedCrop(
                (self.size, self.size), scale=scale, ratio=ratio, align_corners=False, cropping_mode="slice"
            )
        ]
        if probs["hflip_p"] > 0:
            geometric.append(K.RandomHorizontalFlip(p=probs["hflip_p"]))
        if probs["vflip_p"] > 0:
            geometric.append(K.RandomVerticalFlip(p=probs["vflip_p"]))
        if probs["rot90_p"] > 0:
            geometric.append(RandomRot90(p=probs["rot90_p"]))

        photometric: list[nn.Module] = []
        if probs["jitter_p"] > 0 and (brightness > 0 or contrast > 0):
            photometric.append(RandomBandBrightnessContrast(brightness, contrast, p=probs["jitter_p"]))
        if probs["blur_p"] > 0:
            k = self.blur_kernel_size
            photometric.append(K.RandomGaussianBlur((k, k), blur_sigma, border_type="reflect", p=probs["blur_p"]))
        if probs["noise_p"] > 0 and noise_std > 0:
            photometric.append(K.RandomGaussianNoise(mean=0.0, std=noise_std, p=probs["noise_p"]))

        self.geometric: K.AugmentationSequential = K.AugmentationSequential(*geometric)
        self.photometric: K.AugmentationSequential = K.AugmentationSequential(*photometric)

    @property
    def hparams(self) -> dict[str, Any]:
        """The parameters (except ``size``) as plain values: a recipe section that rebuilds it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(self._hparams.items())}

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """Names accepted by :meth:`from_config`: the constructor's arguments except ``size``."""
        return tuple(AugmentConfig.model_fields)

    @classmethod
    def from_config(cls, size: int, params: Mapping[str, Any] | None = None) -> MultiBandViewAugmentation:
        """Build from a recipe's ``augment`` section; missing names keep their defaults.

        Args:
            size: output view side, px.
            params: ``{name: value}`` with names from :meth:`param_names` (the fields of
                :class:`~geocl.recipes.AugmentConfig`), or that model itself.

        Raises:
            GeoclError: an unknown name (with the closest valid one) or a bad value, with
                key ``augment.<name>``.
        """
        params = dict(params or {})
        if "size" in params:
            raise _fail("size", "the view size is set by the method (data.view_size), not in the augmentation section")
        config = validated_section("augment", AugmentConfig, params)
        return cls(size, **dict(config))

    def forward(self, images: Tensor) -> Tensor:
        """Draw one view per tile.

        Args:
            images: ``[B, C, H, W]`` float.

        Returns:
            ``[B, C, size, size]``, same dtype and device.
        """
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"expected a float [B, C, H, W] batch, got {tuple(images.shape)} {images.dtype}")
        return self.photometric(self.geometric(images))


class TwoViews(nn.Module):
    """Two independent views per tile, for two-branch contrastive methods.

    Args:
        augment: the view augmentation (e.g. :class:`MultiBandViewAugmentation`).
        augment_b: a different augmentation for the second view (asymmetric recipes, as
            in BYOL); ``None`` reuses ``augment``.

    Shape:
        - Input: ``[B, C, H, W]``.
        - Output: ``(view_a, view_b)``, each as ``augment``'s output; ``view_a[i]`` and
          ``view_b[i]`` come from image ``i`` (the positive pair), drawn independently.
    """

    def __init__(self, augment: nn.Module, augment_b: nn.Module | None = None) -> None:
        super().__init__()
        self.augment = augment
        self.augment_b = augment_b

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        second = self.augment if self.augment_b is None else self.augment_b
        return self.augment(images), second(images)


def photometric_only(aug: MultiBandViewAugmentation) -> nn.Module:
    """The photometric half of ``aug``: no crop, flip or rotation.

    Pixel ``(i, j)`` of the output is pixel ``(i, j)`` of the input (up to blur, which mixes
    neighbours but moves nothing), so maps computed on its views lie on the tile's grid.
    The blur keeps ``aug``'s kernel (chosen from ``aug.size``), so its strength in pixels
    is the same as on views. The result is an independent copy: calling it leaves the
    parameters recorded by ``aug`` alone.

    Args:
        aug: the full view augmentation.

    Returns:
        a module mapping ``[B, C, H, W]`` to ``[B, C, H, W]`` (same dtype and device).
    """
    return copy.deepcopy(aug.photometric)
