"""The recipe schema: one OmegaConf structured-config dataclass per section.

A recipe has fixed sections (``data``, ``encoder``, ``optimizer``, ``scheduler``,
``trainer``) described here, and two open ones:

* ``method``: ``name`` selects a pretraining method; its other keys are that method's
  parameters, declared by the method itself with :func:`register_method_config`. The
  registry lives here, not in :mod:`geocl.methods`, so that recipes stay below the
  methods in the dependency order and a method's parameters sit next to its code.
* ``augment``: a free-form mapping, validated by the view-augmentation module.

Defaults are the CPU-sized values of the example recipe; ``name``, ``out`` and
``method.name`` have none, and the loader requires the data folder of the chosen
``data.format`` (``data.tiles`` for tiles, ``data.path`` otherwise): a run must say
where its data comes from, where it goes and what it trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

#: Values allowed for the keys that are a choice among names (validated by the loader).
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw", "lars")
SCHEDULERS: tuple[str, ...] = ("cosine", "none")
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Lightning's ``precision`` values (2.x); checked here so a typo fails before any work.
PRECISIONS: tuple[str, ...] = (
    "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true",
    "transformer-engine", "transformer-engine-float16", "32", "16", "bf16", "64",
)
#: Lightning's built-in accelerator names.
ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


@dataclass
class DataConfig:
    """Where the training images come from and how they are batched.

    ``format`` says what the data folder holds; tile sets are named by ``tiles``, the
    natural-image formats by ``path`` (the loader requires the one the format reads).

    Attributes:
        tiles: a tile-set folder written by ``geocl tile`` (mandatory for ``tiles``).
        split: which split to train on (train, val or test).
        batch_size: images per batch (per device).
        num_workers: DataLoader worker processes.
        view_size: side in px of the augmented views.
        format: ``tiles`` (a tile set), ``image_folder`` (one sub-folder of images a
            class) or ``cifar`` (CIFAR-10/100 python batches); see :mod:`geocl.data.natural`.
        path: the image folder or CIFAR folder (mandatory for the natural formats).
        image_size: natural formats: resize (shorter side) and centre-crop images to this
            side in px; 0 = as stored. Tiles are never resized.
        val_fraction: ``image_folder`` without ``val/``: share of each class held out as val.
    """

    tiles: str = ""
    split: str = "train"
    batch_size: int = 32
    num_workers: int = 2
    view_size: int = 96
    # After the tile-set keys, so "valid keys" lists read as before for tile recipes.
    format: str = "tiles"
    path: str = ""
    image_size: int = 0
    val_fraction: float = 0.2


@dataclass
class EncoderConfig:
    """The backbone being pretrained.

    Attributes:
        name: a timm model name (checked by :mod:`geocl.models` when it is built).
        pretrained: start from the timm ImageNet weights.
        args: further ``timm.create_model`` keyword arguments, e.g. a ViT's
            ``{patch_size: 8, img_size: 64, dynamic_img_size: true}`` (checked by timm).
    """

    name: str = "resnet18"
    pretrained: bool = False
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    """The optimiser.

    Attributes:
        name: sgd, adamw or lars.
        lr: base learning rate.
        weight_decay: L2 weight decay.
        momentum: momentum of sgd and lars (adamw ignores it).
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    momentum: float = 0.9


@dataclass
class SchedulerConfig:
    """The learning-rate schedule.

    Attributes:
        name: cosine (decay to zero over the run) or none (constant).
        warmup_epochs: epochs of linear warm-up before the schedule.
    """

    name: str = "cosine"
    warmup_epochs: int = 0


@dataclass
class TrainerConfig:
    """Arguments passed to the Lightning trainer (same names, same meaning).

    ``devices`` and ``limit_train_batches`` are typed ``Any`` because Lightning gives
    their type a meaning (``devices``: a count or ``"auto"``; ``limit_train_batches``:
    an int is a number of batches, a float a fraction) that OmegaConf's typed nodes would
    erase by converting; the loader checks them instead.

    Attributes:
        max_epochs: epochs to train (-1: no limit, then ``max_steps`` must stop it).
        max_steps: optimiser steps to train (-1: no limit).
        devices: device count, -1 for all, or ``"auto"``.
        accelerator: auto, cpu, gpu, cuda, mps or tpu.
        strategy: a Lightning strategy name (auto, ddp, ...).
        precision: a Lightning precision (32-true, 16-mixed, bf16-mixed, ...).
        log_every_n_steps: logging interval in steps.
        limit_train_batches: batches per epoch (int) or fraction of them (float in (0, 1]).
        gradient_clip_val: clip the global gradient norm to this value (0: no clipping).
    """

    max_epochs: int = 3
    max_steps: int = -1
    devices: Any = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    log_every_n_steps: int = 5
    limit_train_batches: Any = 1.0
    gradient_clip_val: float = 0.0


@dataclass
class Recipe:
    """A whole pretraining recipe (the top level of the YAML file).

    Attributes:
        name: the run's name.
        out: the run folder (``config.yaml``, ``checkpoints/``, ``logs/``, ...).
        seed: seed of every random generator of the run.
        data: see :class:`DataConfig`.
        encoder: see :class:`EncoderConfig`.
        method: ``name`` plus the registered method's parameters; the loader replaces
            this with a structured config of the method's dataclass.
        augment: free-form parameters of the view augmentation.
        optimizer: see :class:`OptimizerConfig`.
        scheduler: see :class:`SchedulerConfig`.
        trainer: see :class:`TrainerConfig`.
    """

    name: str = MISSING
    out: str = MISSING
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    method: Any = MISSING
    augment: Any = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


#: Method name -> the dataclass of its parameters.
_METHOD_CONFIGS: dict[str, type] = {}


def register_method_config(name: str, config_cls: type) -> None:
    """Declare the parameters of the method selected by ``method.name: <name>``.

    Args:
        name: the method's name in recipes.
        config_cls: a dataclass whose fields are the method's parameters, each with a
            type OmegaConf supports; it must not have a ``name`` field (the recipe's
            ``method.name`` is the selector).

    Raises:
        TypeError: ``config_cls`` is not a dataclass.
        ValueError: an empty name, a ``name`` field, or a second, different class
            under a name already taken.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a method name must be a non-empty string, got {name!r}")
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"method {name!r}: config class must be a dataclass, got {config_cls!r}")
    if any(f.name == "name" for f in dataclasses.fields(config_cls)):
        raise ValueError(f"method {name!r}: {config_cls.__qualname__} must not have a 'name' field")
    known = _METHOD_CONFIGS.get(name)
    # The same class seen again (module reloaded, e.g. by a notebook's autoreload)
    # replaces the old one; a different class under the same name is a clash.
    if known is not None and (known.__module__, known.__qualname__) != (
        config_cls.__module__, config_cls.__qualname__,
    ):
        raise ValueError(
            f"method {name!r} is already registered with {known.__module__}.{known.__qualname__}"
        )
    _METHOD_CONFIGS[name] = config_cls


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_METHOD_CONFIGS)


def method_config_class(name: str) -> type | None:
    """The parameter dataclass registered under ``name``, or None."""
    return _METHOD_CONFIGS.get(name)
