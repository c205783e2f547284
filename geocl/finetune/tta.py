"""D4 test-time augmentation: a segmentation model averaged over the 8 flips and rotations.

The dihedral group D4 of the square holds 8 transforms ``g = (k, flip)``: an optional
left-right flip followed by ``k`` quarter turns (``k = 0..3``). For a window ``x`` the
augmented logits are

    TTA(x) = 1/8 sum_g  g^-1( model( g(x) ) ),

each view's logits mapped back to the window's own orientation before the mean. As
in ttach's default ``merge_mode="mean"``, the *logits* are averaged (not the softmax
probabilities): the class map is then the argmax of the mean logit and the
probabilities its softmax, so they never disagree. A model that is itself equivariant
under D4 (``model(g(x)) = g(model(x))``, e.g. any per-pixel model or a convolution with
a D4-symmetric kernel) gives back its plain prediction.

Shapes: images ``[B, C, S, S]`` (square: quarter turns of a non-square window would not
stack) -> logits ``[B, K, h, w]`` as the wrapped model returns them. The 8 views run one
after the other, so memory stays that of one model call; time is 8 times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["D4Average", "d4_apply", "d4_invert", "d4_transforms"]

#: One element of D4: (quarter turns counter-clockwise, flip left-right first).
D4Transform = tuple[int, bool]


def d4_transforms() -> Iterator[D4Transform]:
    """The 8 elements of D4, the identity first."""
    for turns in range(4):
        for flip in (False, True):
            yield turns, flip


def d4_apply(images: Tensor, transform: D4Transform) -> Tensor:
    """``g(images)`` for ``[..., H, W]`` tensors: flip left-right (when asked), then turn ``k`` times."""
    turns, flip = transform
    out = images.flip(-1) if flip else images
    return torch.rot90(out, turns, dims=(-2, -1)) if turns else out


def d4_invert(images: Tensor, transform: D4Transform) -> Tensor:
    """``g^-1(images)``: turn back ``k`` times, then undo the flip."""
    turns, flip = transform
    out = torch.rot90(images, -turns, dims=(-2, -1)) if turns else images
    return out.flip(-1) if flip else out


class D4Average:
    """A model wrapped to return the mean of its logits over the 8 D4 views of the input.

    Args:
        model: images ``[B, C, S, S]`` -> logits ``[B, K, h, w]`` with ``h == w``.

    Calling it with ``[B, C, S, S]`` returns float logits of the wrapped model's shape.

    Raises:
        ValueError: on non-square images.
    """

    def __init__(self, model: Callable[[Tensor], Tensor]) -> None:
        self.model = model

    def __call__(self, images: Tensor) -> Tensor:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"D4 test-time augmentation needs square windows, got {tuple(images.shape[-2:])}")
        total: Tensor | None = None
        for transform in d4_transforms():
            logits = d4_invert(self.model(d4_apply(images, transform)).float(), transform)
            # out of place: the first view's logits may be the caller's own tensor
            total = logits if total is None else total + logits
        assert total is not None
        return total / 8
