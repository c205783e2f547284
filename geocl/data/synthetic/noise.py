"""Smooth random fields for the synthetic scene: fractal noise and cheap quantiles.

Every field is drawn from the scene's one generator, so the draw order is part of the
scene: the same calls in the same order give the same scene.
"""

from __future__ import annotations

import math

import numpy as np


def _bspline_weights(factor: int) -> np.ndarray:
    """Cubic B-spline weights of shape (4, factor) for upsampling by *factor*."""
    t = (np.arange(factor, dtype=np.float64) + 0.5) / factor
    w = np.stack([(1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6])
    return w.astype(np.float32)


def upsample(grid: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Smoothly upsample a 2-D grid by an integer *factor* along *axis*.

    A grid of length g along *axis* becomes (g - 3) * factor long (cubic B-spline).
    """
    if factor == 1:
        return grid
    w = _bspline_weights(factor)
    g = grid.shape[axis]
    n = g - 3
    if axis == 0:
        out = w[0][None, :, None] * grid[0:n, None, :]
        for j in range(1, 4):
            out += w[j][None, :, None] * grid[j : j + n, None, :]
        return out.reshape(n * factor, grid.shape[1])
    out = grid[:, 0:n, None] * w[0][None, None, :]
    for j in range(1, 4):
        out += grid[:, j : j + n, None] * w[j][None, None, :]
    return out.reshape(grid.shape[0], n * factor)


def fbm(rng: np.random.Generator, size: int, coarse: int, fine: int, decay: float = 0.5) -> np.ndarray:
    """Fractal smooth noise, shape (size, size), float32, about zero mean and unit std.

    Octaves have cell sizes coarse, coarse/2, ..., fine pixels (powers of two); each
    octave's amplitude is *decay* times the previous one. Built as a pyramid: the
    running sum is upsampled by 2 and a new white-noise octave added, then the
    finest level is upsampled by *fine* to full size.
    """
    fine = max(1, fine)
    coarse = max(fine, coarse)
    cells = [coarse]
    while cells[-1] > fine:
        cells.append(cells[-1] // 2)
    need = [0] * len(cells)
    need[-1] = -(-size // cells[-1]) + 3
    for i in range(len(cells) - 2, -1, -1):
        need[i] = -(-need[i + 1] // 2) + 3
    grid = rng.standard_normal((need[0], need[0]), dtype=np.float32)
    amp = 1.0
    for i in range(1, len(cells)):
        grid = upsample(upsample(grid, 2, 0), 2, 1)[: need[i], : need[i]]
        amp *= decay
        grid += np.float32(amp * 2.0) * rng.standard_normal(grid.shape, dtype=np.float32)
    field = upsample(upsample(grid, cells[-1], 0)[:size], cells[-1], 1)[:, :size]
    field = np.ascontiguousarray(field)
    sample = field[::4, ::4]
    field -= np.float32(sample.mean())
    field *= np.float32(1.0 / max(float(sample.std()), 1e-6))
    return field


def pow2(value: float, lo: int = 4) -> int:
    """The power of two nearest to *value* (in log scale), at least *lo*."""
    return max(lo, 2 ** round(math.log2(max(value, 1.0))))


def quantile(field: np.ndarray, q: float, where: np.ndarray | None = None) -> float:
    """Approximate quantile of a full-size field from a 1-in-16 subsample."""
    sample = field[::4, ::4]
    if where is not None:
        sample = sample[where[::4, ::4]]
    if sample.size == 0:
        return float("inf")
    return float(np.quantile(sample, q))
