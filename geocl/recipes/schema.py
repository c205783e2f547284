"""The recipe schema: one pydantic model per section, holding types, ranges, choices and defaults.

A recipe has fixed sections (``data``, ``encoder``, ``augment``, ``optimizer``, ``scheduler``,
``trainer``, ``monitor``) described here, and one open one:

* ``method``: ``name`` selects a pretraining method; its other keys are that method's
  parameters. A method declares them once, as the typed keyword arguments of its
  constructor; :mod:`geocl.methods.registry` turns that signature into a model and
  registers it here with :func:`register_method_config`. The registry lives here, not
  in :mod:`geocl.methods`, so that recipes stay below the methods in the dependency
  order and this module imports no torch.
* ``augment`` (:class:`AugmentConfig`) holds the view augmentation's parameters.

Why pydantic (v2) and not jsonargparse: the recipes are YAML documents with nested
sections and a section (``method``) whose model depends on a value (``method.name``);
pydantic validates nested data with full dotted locations in one pass, and its error
list is what :mod:`geocl.recipes.errors` turns into one line. Loading YAML, dotted
overrides and ``${...}`` interpolations stay OmegaConf's (:mod:`geocl.recipes.loader`).

Defaults are the CPU-sized values of the example recipe; ``name``, ``out`` and
``method.name`` have none, and the data folder of the chosen ``data.format`` is
required (``data.tiles`` for tiles, ``data.path`` otherwise): a run must say where its
data comes from, where it goes and what it trains.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from geocl.recipes.errors import field_relation
from geocl.recipes.types import FiniteNumber, Probability

SPLITS: tuple[str, ...] = ("train", "val", "test")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw", "lars")
SCHEDULERS: tuple[str, ...] = ("cosine", "none")
DATA_FORMATS: tuple[str, ...] = ("tiles", "image_folder", "cifar", "nifti")
#: The TorchGeo benchmark datasets a recipe can name (``data.dataset``): the keys of
#: ``geocl.data.benchmarks.BENCHMARKS``, repeated here because that module imports torchgeo
#: (tests/data/test_benchmarks.py checks that the two agree).
BenchmarkDataset = Literal["potsdam", "vaihingen", "loveda", "loveda-urban", "loveda-rural"]
BENCHMARK_DATASETS: tuple[str, ...] = typing.get_args(BenchmarkDataset)
#: Lightning's ``precision`` values (2.x); checked here so a typo fails before any work.
Precision = Literal[
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "32",
    "16",
    "bf16",
    "64",
]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
#: Lightning's built-in accelerator names.
ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")

#: A voxel size (nifti ``data.spacing``).
Millimetres = Annotated[FiniteNumber, Field(gt=0)]

#: numpy and Lightning take seeds as unsigned 32-bit integers.
Seed = Annotated[int, Field(ge=0, lt=2**32, description="seed of every random generator")]


def field_error(model: str, field: str, value: Any, message: str) -> ValidationError:
    """An error of one field found by a rule over several (raised from a model validator).

    Pydantic puts a model validator's own errors at the model; raising this instead
    puts it at ``field``, so that the message names the dotted key at fault.
    ``message`` ``"missing"`` reports a missing value.
    """
    kind: Any = "missing" if message == "missing" else PydanticCustomError("value_error", message)
    return ValidationError.from_exception_data(model, [{"type": kind, "loc": (field,), "input": value}])


class Section(BaseModel):
    """Base of every recipe section: unknown keys refused, values read-only once validated.

    Numbers given for a string field (``name: 1e5``) stay strings, as YAML users expect.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, validate_default=True)


class DataConfig(Section):
    """Where the training images come from and how they are batched.

    ``format`` says what the data folder holds; tile sets are named by ``tiles``, the
    natural-image formats and NIfTI volumes (``nifti``: 2D slices of 3D volumes, with
    ``spacing``, ``slice_axis`` and ``intensity``) by ``path`` (the one the format reads
    is required).
    """

    tiles: str = Field(default="", description="a tile-set folder written by `geocl tile` (format tiles)")
    split: Literal["train", "val", "test"] = Field(default="train", description="the split to train on")
    batch_size: int = Field(default=32, ge=1, description="images per batch (per device)")
    num_workers: int = Field(default=2, ge=0, description="DataLoader worker processes")
    view_size: int = Field(default=96, ge=1, description="side in px of the augmented views")
    format: Literal["tiles", "image_folder", "cifar", "nifti"] = Field(
        default="tiles",
        description="tiles, image_folder (a sub-folder of images a class), cifar (python batches) or "
        "nifti (3D medical volumes with label maps, trained on as 2D slices)",
    )
    path: str = Field(
        default="", description="the image folder, CIFAR folder or NIfTI data folder (formats other than tiles)"
    )
    image_size: int = Field(
        default=0,
        ge=0,
        description="natural formats: resize and centre-crop images to this side in px (0 = as stored); "
        "nifti: pad or centre-crop slices to this side (0 = the largest slice)",
    )
    val_fraction: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="image_folder without val/: share held out as val; nifti without "
        "splits.json: share of the labelled cases held out as val",
    )
    dataset: str = Field(
        default="",
        description="a TorchGeo benchmark (potsdam, vaihingen, loveda, ...) read from root and tiled into "
        "`tiles` on first use (format tiles)",
    )
    root: str = Field(default="", description="the folder holding the benchmark dataset in TorchGeo's layout")
    spacing: tuple[Millimetres, Millimetres, Millimetres] | None = Field(
        default=None,
        description="nifti: resample volumes to this voxel size in mm per RAS axis (default: the cases' median)",
    )
    slice_axis: int = Field(
        default=2, ge=0, le=2, description="nifti: the RAS axis 2D slices are taken across (2: axial)"
    )
    intensity: Literal["zscore", "percentile"] = Field(
        default="zscore",
        description="nifti: per-volume intensity normalisation, zscore (MRI) or percentile (0.5-99.5 % to [0, 1], CT)",
    )

    @field_validator("dataset")
    @classmethod
    def _known_benchmark(cls, name: str) -> str:
        if name and name not in BENCHMARK_DATASETS:
            close = difflib.get_close_matches(name.lower(), BENCHMARK_DATASETS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"not a benchmark dataset{hint} (choices: {', '.join(BENCHMARK_DATASETS)})")
        return name

    @model_validator(mode="after")
    def _folder_of_the_format(self) -> DataConfig:
        folder = "tiles" if self.format == "tiles" else "path"
        if not getattr(self, folder):
            raise field_error("DataConfig", folder, "", "missing")
        if self.dataset and self.format != "tiles":
            raise field_error(
                "DataConfig", "dataset", self.dataset, "benchmarks become tile sets; only format tiles reads it"
            )
        if self.dataset and not self.root:
            raise field_error("DataConfig", "root", "", "missing")
        if self.root and not self.dataset:
            raise field_error("DataConfig", "root", self.root, "is read only with data.dataset (a benchmark name)")
        if self.format == "tiles" and self.image_size != 0:
            raise field_error(
                "DataConfig", "image_size", self.image_size, "tiles are not resized; only natural formats read it"
            )
        if self.format != "nifti":
            for name in ("spacing", "slice_axis", "intensity"):
                # a value other than the default (a saved recipe repeats every default)
                if getattr(self, name) != type(self).model_fields[name].default:
                    raise field_error("DataConfig", name, getattr(self, name), "only data.format nifti reads it")
        if self.format != "tiles" and 0 < self.image_size < 8:
            raise field_error(
                "DataConfig", "image_size", self.image_size, "must be 0 (images as stored) or at least 8 px"
            )
        return self


class EncoderConfig(Section):
    """The backbone being pretrained."""

    name: str = Field(default="resnet18", description="a timm model name (checked when the encoder is built)")
    pretrained: bool = Field(default=False, description="start from the timm ImageNet weights")
    weights: str = Field(
        default="",
        description=(
            "weights to start from: a TorchGeo weights name (e.g. ResNet18_Weights.SENTINEL2_ALL_MOCO), "
            "a timm pretrained tag (e.g. resnet18.a1_in1k) or a file; '' = random init"
        ),
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="further timm.create_model arguments, e.g. a ViT's patch_size"
    )


class OptimizerConfig(Section):
    """The optimiser."""

    name: Literal["sgd", "adamw", "lars"] = Field(default="adamw", description="sgd, adamw or lars")
    lr: float = Field(default=1e-3, gt=0, description="base learning rate")
    weight_decay: float = Field(default=1e-6, ge=0, description="L2 weight decay")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="momentum of sgd and lars (adamw ignores it)")


class SchedulerConfig(Section):
    """The learning-rate schedule."""

    name: Literal["cosine", "none"] = Field(default="cosine", description="cosine (decay to zero over the run) or none")
    warmup_epochs: int = Field(default=0, ge=0, description="epochs of linear warm-up before the schedule")


def _count_or_unlimited(value: int) -> int:
    if value < 1 and value != -1:
        raise ValueError("must be at least 1, or -1 (no limit)")
    return value


class TrainerConfig(Section):
    """Arguments passed to the Lightning trainer (same names, same meaning), and ``snapshot_steps``.

    ``devices`` and ``limit_train_batches`` keep Lightning's reading of their type:
    ``devices`` is a count or ``"auto"``; for ``limit_train_batches`` an int is a
    number of batches and a float a fraction of them.
    """

    max_epochs: int = Field(default=3, description="epochs to train (-1: no limit, then max_steps must stop it)")
    max_steps: int = Field(default=-1, description="optimiser steps to train (-1: no limit)")
    devices: int | Literal["auto"] = Field(default=1, description="device count, -1 for all, or 'auto'")
    num_nodes: int = Field(
        default=1, ge=1, description="machines of a multi-node DDP run (each with `devices` devices)"
    )
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = Field(
        default="auto", description="Lightning accelerator"
    )
    strategy: str = Field(default="auto", description="a Lightning strategy name (auto, ddp, ...)")
    precision: Precision = Field(default="32-true", description="a Lightning precision (32-true, bf16-mixed, ...)")
    log_every_n_steps: int = Field(default=5, ge=1, description="logging interval in steps")
    limit_train_batches: int | float = Field(
        default=1.0, description="batches per epoch (integer) or a fraction of them (float in (0, 1])"
    )
    gradient_clip_val: float = Field(default=0.0, ge=0, description="clip the global gradient norm (0: no clipping)")
    logger: Literal["csv", "tensorboard", "mlflow"] = Field(
        default="csv",
        description="experiment logger beside the CSV log that is always written: csv, tensorboard or mlflow",
    )
    checkpoint_every_s: float = Field(
        default=60.0,
        ge=0,
        description="least time between two epoch-end checkpoints, seconds (the last epoch is always saved; "
        "0: every epoch)",
    )
    snapshot_steps: list[int] = Field(
        default_factory=list,
        description="optimizer steps at which the run's state is kept in snapshots/step<N>.ckpt (a budget sweep's "
        "shorter budgets)",
    )

    _max_epochs = field_validator("max_epochs")(_count_or_unlimited)
    _max_steps = field_validator("max_steps")(_count_or_unlimited)

    @field_validator("snapshot_steps")
    @classmethod
    def _positive_steps(cls, value: list[int]) -> list[int]:
        if any(step < 1 for step in value):
            raise ValueError("expected optimizer steps of at least 1")
        return sorted(set(value))

    @model_validator(mode="after")
    def _something_stops_the_run(self) -> TrainerConfig:
        # Lightning would train for ever (and the cosine schedule has no length to decay over)
        if self.max_epochs == -1 and self.max_steps == -1:
            rule = field_relation(
                "is -1 (no limit) and so is {max_steps}: nothing would stop the run; "
                "give {max_epochs} or {max_steps} a limit (a count of at least 1)",
                max_epochs="max_epochs",
                max_steps="max_steps",
            )
            raise ValidationError.from_exception_data(
                "TrainerConfig", [{"type": rule, "loc": ("max_epochs",), "input": self.max_epochs}]
            )
        unreached = [step for step in self.snapshot_steps if self.max_steps != -1 and step > self.max_steps]
        if unreached:
            # a snapshot the run never reaches would only be missed when something reads it
            rule = field_relation(
                f"has steps beyond {{max_steps}} ({self.max_steps}): the run ends before them, so no snapshot "
                "would be written; give steps up to the budget",
                max_steps="max_steps",
            )
            raise ValidationError.from_exception_data(
                "TrainerConfig", [{"type": rule, "loc": ("snapshot_steps",), "input": unreached}]
            )
        return self

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        # YAML reads `precision: 16` as a number; Lightning's names are strings
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("devices")
    @classmethod
    def _device_count(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1 and value != -1:
            raise ValueError("expected a device count (at least 1), -1 (all) or 'auto'")
        return value

    @field_validator("limit_train_batches")
    @classmethod
    def _batches_or_fraction(cls, value: int | float) -> int | float:
        if isinstance(value, int) and value < 1 or isinstance(value, float) and not 0 < value <= 1:
            raise ValueError("expected a number of batches (integer, at least 1) or a fraction in (0, 1]")
        return value


class MonitorConfig(Section):
    """The online representation monitor of ``geocl pretrain`` (:mod:`geocl.training.monitor`).

    A kNN segmentation probe of the frozen encoder on a fixed subset of the tile set's
    labelled val tiles, at step 0 (the random-init reference), every ``every_n_steps``
    optimizer steps and at the last step. It changes nothing the run trains, so it may
    change on ``--resume``. Tile sets only; off without masks or val tiles.
    """

    every_n_steps: Annotated[int, Field(ge=0)] | None = Field(
        default=10, description="probe every N optimizer steps (and at steps 0 and last); 0 or null: off"
    )
    tiles: int = Field(
        default=8, ge=2, description="labelled val tiles probed (a fixed subset; half vote, half are scored)"
    )
    grid: int = Field(default=16, ge=1, description="cells a tile side: each cell's pooled features are one kNN sample")
    k: int = Field(default=20, ge=1, description="neighbours that vote for each cell")
    temperature: float = Field(default=0.07, gt=0, description="T of the vote weight exp(cosine similarity / T)")


Pair = tuple[FiniteNumber, FiniteNumber]


class AugmentConfig(Section):
    """The view augmentation (:class:`~geocl.transforms.MultiBandViewAugmentation`); the view
    side itself is ``data.view_size``."""

    scale: Pair = Field(
        default=(0.08, 1.0), description="range of the crop area as a fraction of the tile area, 0 < low <= high <= 1"
    )
    ratio: Pair = Field(
        default=(3.0 / 4.0, 4.0 / 3.0), description="range of the crop aspect ratio (width / height), 0 < low <= high"
    )
    hflip_p: Probability = Field(default=0.5, description="probability of a horizontal flip")
    vflip_p: Probability = Field(default=0.5, description="probability of a vertical flip")
    rot90_p: Probability = Field(default=0.5, description="probability of a random quarter-turn rotation")
    jitter_p: Probability = Field(default=0.8, description="probability of the per-band brightness/contrast jitter")
    brightness: FiniteNumber = Field(
        default=0.4, ge=0.0, description="jitter shift half-range, normalised units (band std)"
    )
    contrast: FiniteNumber = Field(
        default=0.4,
        ge=0.0,
        le=1.0,
        description="jitter contrast-factor half-range around 1 (factors 1 +/- contrast stay >= 0)",
    )
    blur_p: Probability = Field(default=0.5, description="probability of a Gaussian blur")
    blur_sigma: Pair = Field(default=(0.1, 2.0), description="range of the blur sigma in px, 0 < low <= high")
    noise_p: Probability = Field(default=0.2, description="probability of additive Gaussian noise")
    noise_std: FiniteNumber = Field(default=0.05, ge=0.0, description="noise std, normalised units")

    @field_validator("scale", "ratio", "blur_sigma")
    @classmethod
    def _ordered_positive_range(cls, value: tuple[float, float], info: Any) -> tuple[float, float]:
        low, high = value
        if low <= 0.0:
            raise ValueError(f"low must be > 0, got {list(value)}")
        if low > high:
            raise ValueError(f"low must be <= high, got {list(value)}")
        if info.field_name == "scale" and high > 1.0:
            raise ValueError(f"must satisfy 0 < low <= high <= 1, got {list(value)}")
        return value


class MethodParams(Section):
    """Base of every method's parameter model: ``name`` selects the method.

    Attributes:
        registered_from: the class given to :func:`register_method_config` (set on each
            registered model).
    """

    registered_from: ClassVar[type | None] = None
    name: str


class Recipe(Section):
    """A whole pretraining recipe (the top level of the YAML file).

    ``method`` is validated against the model registered for ``method.name``
    (:func:`recipe_model` builds the recipe model of one method).
    """

    name: str = Field(description="the run's name")
    out: str = Field(description="the run folder (config.yaml, checkpoints/, logs/, ...)")
    seed: Seed = 0
    data: DataConfig = Field(default_factory=DataConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    method: MethodParams
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @field_validator("monitor", mode="before")
    @classmethod
    def _empty_monitor_keeps_defaults(cls, value: Any) -> Any:
        # `monitor:` with nothing under it, as an empty section of the loader's list does
        return {} if value is None else value


#: Method name -> the model of its parameters (with ``name``); its ``registered_from``
#: is the class given to :func:`register_method_config`.
_METHOD_CONFIGS: dict[str, type[MethodParams]] = {}


def _is_model(config_cls: object) -> typing.TypeGuard[type[BaseModel]]:
    """Whether a method's config class is a pydantic model (else it should be a dataclass)."""
    return isinstance(config_cls, type) and issubclass(config_cls, BaseModel)


def _params_model(name: str, config_cls: type) -> type[MethodParams]:
    """The parameter model of a method from a pydantic model or a dataclass."""
    is_model = _is_model(config_cls)
    fields: dict[str, Any] = {"name": (Literal[name], name)}
    if _is_model(config_cls):
        fields.update({key: (info.annotation, info) for key, info in config_cls.model_fields.items()})
    else:
        hints = typing.get_type_hints(config_cls, include_extras=True)
        for item in dataclasses.fields(config_cls):
            if item.default is not dataclasses.MISSING:
                fields[item.name] = (hints[item.name], item.default)
            elif item.default_factory is not dataclasses.MISSING:
                fields[item.name] = (hints[item.name], Field(default_factory=item.default_factory))
            else:
                fields[item.name] = (hints[item.name], ...)
    model = create_model(
        config_cls.__name__ if is_model else f"{config_cls.__name__}Params",
        __base__=MethodParams,
        __doc__=config_cls.__doc__,
        **fields,
    )
    model.registered_from = config_cls
    return model


def register_method_config(name: str, config_cls: type) -> None:
    """Declare the parameters of the method selected by ``method.name: <name>``.

    Args:
        name: the method's name in recipes.
        config_cls: a pydantic model or a dataclass whose fields are the method's
            parameters (types, defaults and ``Field`` ranges); it must not have a
            ``name`` field (the recipe's ``method.name`` is the selector).

    Raises:
        TypeError: ``config_cls`` is neither a pydantic model nor a dataclass.
        ValueError: an empty name, a ``name`` field, or a second, different class
            under a name already taken.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a method name must be a non-empty string, got {name!r}")
    is_model = _is_model(config_cls)
    if not (is_model or (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls))):
        raise TypeError(f"method {name!r}: config class must be a pydantic model or a dataclass, got {config_cls!r}")
    names = config_cls.model_fields if _is_model(config_cls) else {f.name for f in dataclasses.fields(config_cls)}
    if "name" in names:
        raise ValueError(f"method {name!r}: {config_cls.__qualname__} must not have a 'name' field")
    known = getattr(_METHOD_CONFIGS.get(name), "registered_from", None)
    # The same class seen again (module reloaded, e.g. by a notebook's autoreload)
    # replaces the old one; a different class under the same name is a clash.
    if known is not None and (known.__module__, known.__qualname__) != (config_cls.__module__, config_cls.__qualname__):
        raise ValueError(f"method {name!r} is already registered with {known.__module__}.{known.__qualname__}")
    _METHOD_CONFIGS[name] = _params_model(name, config_cls)


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_METHOD_CONFIGS)


def method_config_class(name: str) -> type[MethodParams] | None:
    """The parameter model (with ``name``) registered under ``name``, or None."""
    return _METHOD_CONFIGS.get(name)


def recipe_model() -> type[Recipe]:
    """The recipe model over the registered methods: ``method`` is a union tagged by ``method.name``."""
    return _recipe_model(tuple(_METHOD_CONFIGS[name] for name in method_names()))


@lru_cache(maxsize=8)
def _recipe_model(models: tuple[type[MethodParams], ...]) -> type[Recipe]:
    if not models:
        return Recipe
    section: Any = models[0] if len(models) == 1 else Annotated[Union[models], Field(discriminator="name")]  # noqa: UP007
    return create_model("Recipe", __base__=Recipe, __doc__=Recipe.__doc__, method=(section, ...))
