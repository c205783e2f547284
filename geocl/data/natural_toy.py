"""Toy natural-image data sets in the exact on-disk formats geocl reads: CIFAR batches and image folders.

The images show their class in their colour and stripes, so that an encoder pretrained
on them beats chance; tests, the examples and ``geocl make-natural`` use them.
"""

from __future__ import annotations

import colorsys
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from geocl.data.cifar import CIFAR_SIZE
from geocl.errors import InvalidInputError


def toy_images(labels: np.ndarray, num_classes: int, size: int, seed: int) -> np.ndarray:
    """Images whose class shows in their colour and stripes: uint8 ``[N, 3, size, size]``.

    Class c has its own stripe angle and frequency and leans towards its own hue (c /
    num_classes around the colour wheel); each image draws its hue around that one, its
    stripe phase, a brightness factor, a distracting blob and pixel noise, so images of
    one class differ and a random encoder does not separate the classes perfectly.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) / size
    images = np.empty((len(labels), 3, size, size), dtype=np.uint8)
    for index, label in enumerate(np.asarray(labels)):
        hue = (label / num_classes + rng.normal(0.0, 0.5 / num_classes)) % 1.0
        colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.3, 0.9), 0.9))
        angle = math.pi * ((label * 3) % num_classes) / num_classes + rng.normal(0.0, 0.15)
        frequency = 2 + label % 3
        phase = rng.uniform(0, 2 * math.pi)
        stripes = 0.5 + 0.5 * np.sin(
            2 * math.pi * frequency * (cols * math.cos(angle) + rows * math.sin(angle)) + phase
        )
        light = rng.uniform(0.5, 1.0)
        pixels = colour[:, None, None] * (0.5 + 0.5 * stripes)[None] * light
        centre = rng.uniform(0, 1, size=2)
        blob = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * rng.uniform(0.05, 0.2) ** 2))
        pixels = pixels * (1 - blob) + rng.uniform(0, 1, size=3)[:, None, None] * blob
        pixels += rng.normal(0.0, 0.12, size=pixels.shape)
        images[index] = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)
    return images


def _toy_labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_toy_cifar(
    out: str | os.PathLike[str],
    *,
    num_classes: int = 10,
    per_class: int = 50,
    test_per_class: int = 10,
    train_batches: int = 5,
    seed: int = 0,
    variant: str = "cifar10",
) -> Path:
    """Write a toy data set as CIFAR python batches (the exact keys, dtypes and layout).

    CIFAR-10 layout: ``data_batch_1..train_batches``, ``test_batch``, ``batches.meta``
    (``label_names``); CIFAR-100 layout (``variant="cifar100"``): ``train``, ``test``,
    ``meta`` (``fine_label_names``, ``coarse_label_names``) with ``fine_labels`` and
    ``coarse_labels`` (here: fine label // 5). ``data`` is uint8 ``[N, 3072]``: the red,
    green and blue 32x32 planes of each image, row-major.

    Returns:
        ``out``.
    """
    if variant not in ("cifar10", "cifar100"):
        raise InvalidInputError(f"unknown CIFAR variant {variant!r}; choose cifar10 or cifar100", key="variant")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"class{index}" for index in range(num_classes)]

    def batch(labels: np.ndarray, label_text: str, image_seed: int) -> dict[str, Any]:
        images = toy_images(labels, num_classes, CIFAR_SIZE, image_seed)
        content: dict[str, Any] = {
            "batch_label": label_text,
            "data": images.reshape(len(images), -1),
            "filenames": [f"toy_{image_seed}_{index:05d}.png" for index in range(len(images))],
        }
        if variant == "cifar10":
            content["labels"] = [int(label) for label in labels]
        else:
            content["fine_labels"] = [int(label) for label in labels]
            content["coarse_labels"] = [int(label) // 5 for label in labels]
        return content

    def dump(name: str, content: dict[str, Any]) -> None:
        with (out / name).open("wb") as handle:
            pickle.dump(content, handle, protocol=2)

    train = _toy_labels(num_classes, per_class, rng)
    test = _toy_labels(num_classes, test_per_class, rng)
    if variant == "cifar10":
        for number, labels in enumerate(np.array_split(train, train_batches), start=1):
            dump(
                f"data_batch_{number}",
                batch(labels, f"training batch {number} of {train_batches}", seed * 100 + number),
            )
        dump("test_batch", batch(test, "testing batch 1 of 1", seed * 100))
        dump(
            "batches.meta",
            {"num_cases_per_batch": math.ceil(len(train) / train_batches), "label_names": names, "num_vis": 3072},
        )
    else:
        dump("train", batch(train, "training batch 1 of 1", seed * 100 + 1))
        dump("test", batch(test, "testing batch 1 of 1", seed * 100))
        coarse = [f"superclass{index}" for index in range((num_classes + 4) // 5)]
        dump("meta", {"fine_label_names": names, "coarse_label_names": coarse})
    return out


def write_toy_image_folder(
    out: str | os.PathLike[str],
    classes: Sequence[str] | int = 4,
    per_class: int = 10,
    size: int = 32,
    seed: int = 0,
    *,
    val_per_class: int = 0,
    suffix: str = ".png",
) -> Path:
    """Write a toy image folder: ``out/<class>/<n>.png`` (or ``train/`` and ``val/`` inside).

    Args:
        out: the folder.
        classes: class names, or a count (names ``class0``, ``class1``, ...).
        per_class: (train) images per class.
        size: image side (px).
        seed: seed of the pixels.
        val_per_class: with > 0, write ``train/<class>/`` and ``val/<class>/`` instead.
        suffix: image file type (``.png`` keeps pixels exact; ``.jpg`` does not).

    Returns:
        ``out``.
    """
    out = Path(out)
    names = [f"class{index}" for index in range(classes)] if isinstance(classes, int) else list(classes)
    splits = {"train": per_class, "val": val_per_class} if val_per_class > 0 else {"": per_class}
    for offset, (split, count) in enumerate(splits.items()):
        labels = np.repeat(np.arange(len(names)), count)
        images = toy_images(labels, len(names), size, seed * 10 + offset)
        for index, (label, image) in enumerate(zip(labels, images, strict=True)):
            folder = out / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{index:05d}{suffix}")
    return out
