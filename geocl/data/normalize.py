"""Band normalisation with a tile set's statistics, shared by every loader."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class BandNormalizer:
    """``(x - mean) / std`` per band, with nodata pixels set to 0 (the band mean).

    Args:
        mean: per-band mean (raster units).
        std: per-band standard deviation (raster units; clamped to >= 1e-6).
        nodata: value that marks a missing pixel when every band holds it.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], nodata: float) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.maximum(np.asarray(std, dtype=np.float32), 1e-6)
        # (x - mean) / std as one multiply-add per pixel
        self._scale = (1.0 / self.std)[:, None, None]
        self._shift = (-self.mean / self.std)[:, None, None]
        self.nodata = nodata

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> BandNormalizer:
        """From a tile set's ``tiles.json`` contents."""
        stats = metadata["band_stats"]
        return cls(stats["mean"], stats["std"], metadata["nodata"])

    def invalid(self, raw: np.ndarray) -> np.ndarray:
        """``[H, W]`` bool, True where every band of ``raw`` ``[C, H, W]`` is nodata, or any band
        is NaN or infinite (as :func:`geocl.data.stats.valid_pixels` counts them)."""
        invalid = (raw == self.nodata).all(axis=0)
        if np.issubdtype(raw.dtype, np.floating):
            invalid |= ~np.isfinite(raw).all(axis=0)
        return invalid

    def __call__(self, raw: np.ndarray, invalid: np.ndarray | None = None) -> np.ndarray:
        """Normalise ``raw`` ``[C, H, W]`` (any numeric dtype) to float32.

        Args:
            raw: the pixels.
            invalid: precomputed nodata mask, or None to skip the nodata test (for
                tiles known to hold no nodata).
        """
        image = np.empty(raw.shape, dtype=np.float32)
        np.multiply(raw, self._scale, out=image, casting="unsafe")
        image += self._shift
        if invalid is not None:
            image[:, invalid] = 0.0
        return image

    def sample_transform(self, sample: dict[str, Any]) -> dict[str, Any]:
        """TorchGeo-style transform: normalise ``sample["image"]`` (a tensor) in place of the raw one."""
        raw = sample["image"].numpy()
        sample["image"] = torch.from_numpy(self(raw, self.invalid(raw)))
        return sample
