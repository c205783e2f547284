"""The synthetic scene while it is painted: class and object id per pixel, object spectra."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Canvas:
    """The scene while it is painted.

    Attributes:
        rng: the one random generator of the scene.
        n: width and height in pixels.
        f: object-size scale (1 for the default 4096 px scene, down to 0.35).
        area: scene area relative to the default scene.
        xs: pixel-centre coordinates 0.5 ... n - 0.5, shape (n,), float32.
        cls: class per pixel, shape (n, n), uint8.
        obj: object id per pixel (row of the spectra table), shape (n, n), int32;
            -1 until the end for pixels without an object of their own.
        spectra: object spectra on the 6 base bands, blocks of shape (k, 6).
        count: number of objects so far.
    """

    rng: np.random.Generator
    n: int
    f: float
    area: float
    xs: np.ndarray
    cls: np.ndarray
    obj: np.ndarray
    spectra: list[np.ndarray] = field(default_factory=list)
    count: int = 0

    def add(self, spectra: np.ndarray) -> int:
        """Register object spectra of shape (k, 6); return the id of the first."""
        spectra = np.atleast_2d(np.asarray(spectra, dtype=np.float32))
        first = self.count
        self.spectra.append(spectra)
        self.count += len(spectra)
        return first

    def paint(self, where: np.ndarray, cls: int, obj: int | np.ndarray = -1) -> None:
        """Set the class (and object id, -1 = natural stand) of the pixels in *where*."""
        self.cls[where] = cls
        self.obj[where] = obj

    def window(self, cx: float, cy: float, half: float) -> tuple[slice, slice] | None:
        """Row and column slices of the square of half-side *half* around (cx, cy), clipped."""
        y0, y1 = max(0, int(cy - half)), min(self.n, int(cy + half) + 1)
        x0, x1 = max(0, int(cx - half)), min(self.n, int(cx + half) + 1)
        if y0 >= y1 or x0 >= x1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def blob(
        self,
        cx: float,
        cy: float,
        radius: float,
        shape: np.ndarray,
        *,
        wobble: float,
        aspect: float = 1.0,
        angle: float = 0.0,
    ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """An irregular ellipse: window slices and the boolean mask inside them.

        The boundary is the ellipse of semi-axes *radius* and *radius* x *aspect*
        (rotated by *angle*), pushed in and out by *wobble* times the smooth field
        *shape* (n, n).
        """
        win = self.window(cx, cy, 2 * radius + 2)
        if win is None:
            return None
        dx = self.xs[None, win[1]] - np.float32(cx)
        dy = self.xs[win[0], None] - np.float32(cy)
        c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        a = (dx * c + dy * s) / np.float32(radius)
        b = (dy * c - dx * s) / np.float32(radius * aspect)
        return win, np.hypot(a, b) < 1.0 + wobble * shape[win]
