"""The options of ``geocl tile``, ``finetune``, ``evaluate``, ``predict`` and ``compare``.

One pydantic model a command: each field holds its type, default, range
(``Field(ge=...)``), choices (``Literal``) and a user-facing ``description``; cross-field
rules are validators on the later field. The CLI derives its flags, defaults and help
from these models (:mod:`geocl.recipes.cli_args`) and Python callers build them
directly; either way a bad value fails here, before any heavy import or work, and
:func:`geocl.recipes.errors.validation_error` turns the failure into one line.

Two kinds of model:

* ``*Options`` hold what a library function takes as settings: :class:`FinetuneOptions`
  and :class:`EvaluateOptions` are the training and evaluation settings that
  ``geocl compare`` passes to every row (``run_finetune(**options.model_dump(), ...)``);
  :class:`TileOptions`, :class:`PredictOptions` and :class:`CompareOptions` a whole
  command's.
* ``*Command`` add a command's own inputs to the settings: :class:`FinetuneCommand`
  (tile set, run folder, encoder, label fraction, seed) and :class:`EvaluateCommand`.
  Their field names are the keyword arguments of the function the command calls.

Field names are the library's names; the CLI maps a few to the flags users know
(``max_epochs`` is ``--epochs``). Importing this module imports pydantic only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from geocl.recipes.errors import field_relation
from geocl.recipes.types import Integer, Number


#: A seed: numpy and Lightning take unsigned 32-bit integers.
Seed = Annotated[Integer, Field(ge=0, lt=2**32)]
#: A fraction of the labelled train tiles.
LabelFraction = Annotated[Number, Field(gt=0, le=1)]
#: Lightning accelerators a finetune can run on.
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]

#: Smallest prediction window (px); ``geocl.finetune.predict.MIN_WINDOW``, repeated
#: here because that module imports torch.
MIN_WINDOW = 16


class OptionsModel(BaseModel):
    """Base of the option models: unknown keys are refused and defaults validated too
    (so cross-field rules see every field)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# ------------------------------------------------------------------------ tile


class TileOptions(OptionsModel):
    """``geocl tile``: cut a scene into tiles with a GeoPackage index."""

    scene: Path = Field(description="a GeoTIFF or a folder of GeoTIFFs")
    out: Path = Field(description="output folder (rerun the same command to resume)")
    mask: Path | None = Field(None, description="one-band class mask (a file or a folder)")
    roi: Path | None = Field(None, description="vector file of the region of interest")
    size: Integer = Field(256, ge=8, description="tile side in px")
    stride: Integer | None = Field(
        None, ge=1, description="px between tile origins (default: the tile size; smaller overlaps tiles)"
    )
    max_nodata: Number = Field(0.2, ge=0, le=1, description="skip tiles whose nodata fraction is above this")
    split_block: Integer | None = Field(
        None, ge=1, description="side in px of the square blocks that get one split each (default: 4 x tile size)"
    )
    split: tuple[Number, Number, Number] = Field(
        (0.7, 0.15, 0.15), description="fractions of the blocks for train, val and test (summing to 1)"
    )
    seed: Seed = Field(0, description="seed of the block-to-split draw")
    quiet: bool = Field(False, description="no progress bars")

    @field_validator("stride")
    @classmethod
    def _stride_defaults_to_size(cls, stride: int | None, info: ValidationInfo) -> int | None:
        return info.data.get("size") if stride is None else stride

    @field_validator("split_block")
    @classmethod
    def _split_block_holds_a_tile(cls, block: int | None, info: ValidationInfo) -> int | None:
        size, stride = info.data.get("size"), info.data.get("stride")
        if block is None:
            if size is None:
                return None
            block = 4 * size
            if stride is not None and block < stride:
                raise field_relation(
                    f"defaults to 4 x {{size}} ({block} px), which is less than {{stride}} ({stride} px); "
                    "give one at least as large as the stride",
                    size="size", stride="stride",
                )
        if stride is not None and block < stride:
            raise field_relation(f"must be at least {{stride}} ({stride} px), got {block}", stride="stride")
        return block

    @field_validator("split")
    @classmethod
    def _fractions_sum_to_one(cls, fractions: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(fractions) < 0:
            raise ValueError(f"fractions must not be negative, got {' '.join(f'{f:g}' for f in fractions)}")
        if not math.isclose(sum(fractions), 1.0):
            raise ValueError(f"fractions must sum to 1, got {sum(fractions):g}")
        return fractions


# -------------------------------------------------------------------- finetune


class FinetuneOptions(OptionsModel):
    """How a segmentation model is finetuned (what ``geocl compare`` passes to every row)."""

    arch: Literal["unet", "deeplabv3plus", "dpt", "linear"] = Field(
        "unet", description="segmentation decoder (a ViT encoder always gets dpt); linear: the frozen dense linear probe"
    )
    max_epochs: Integer = Field(15, ge=1, description="finetuning epochs (each of a fixed number of steps)")
    steps_per_epoch: Integer = Field(
        10, ge=1, description="optimizer steps per epoch (the same for every label fraction)"
    )
    val_every: Integer = Field(3, ge=1, description="epochs between validations")
    patience: Integer = Field(3, ge=0, description="validations without val-mIoU gain before stopping early")
    batch_size: Integer = Field(8, ge=1, description="tiles per step")
    lr: Number = Field(1e-3, gt=0, description="AdamW learning rate")
    crop: Integer = Field(128, ge=8, description="side in px of the random training crops")
    freeze_encoder: bool = Field(False, description="train the decoder only")
    num_workers: Integer = Field(0, ge=0, description="DataLoader worker processes")
    accelerator: Accelerator = Field("auto", description="device to train on")
    progress: bool = Field(True, description="show progress bars")


class FinetuneCommand(FinetuneOptions):
    """``geocl finetune``: the settings plus the data, the encoder and the label fraction.

    The field names are the keyword arguments of ``geocl.finetune.train.run_finetune``.
    """

    tiles: Path = Field(description="a tile set with masks (made by geocl tile with a mask)")
    out: Path = Field(description="run folder (checkpoints/, logs/, metrics.json)")
    encoder_checkpoint: Path | None = Field(None, description="a geocl pretrain checkpoint (default: random init)")
    encoder: str = Field("resnet18", min_length=1, description="encoder of a random init (a checkpoint brings its own)")
    label_fraction: LabelFraction = Field(0.05, description="fraction of the train tiles with labels, in (0, 1]")
    seed: Seed = Field(0, description="seed of the label subset, the init and the training order")


# -------------------------------------------------------------------- evaluate


class EvaluateOptions(OptionsModel):
    """How a frozen encoder is evaluated on natural images (kNN and linear probe)."""

    k: Integer = Field(20, ge=1, description="kNN neighbours")
    temperature: Number = Field(0.07, gt=0, description="kNN vote temperature")
    probe_epochs: Integer = Field(100, ge=1, description="linear-probe epochs")
    probe_lr: Number = Field(0.1, gt=0, description="linear-probe SGD learning rate")
    batch_size: Integer = Field(256, ge=1, description="images per forward pass")
    num_workers: Integer = Field(0, ge=0, description="DataLoader worker processes")
    momentum_encoder: bool = Field(
        False, description="evaluate the momentum (EMA) encoder (MoCo, PatchMix, MultiNet), as the PatchMix spec does"
    )


class EvaluateCommand(EvaluateOptions):
    """``geocl evaluate``: the settings plus the encoder and the data.

    The field names are the keyword arguments of ``geocl.evaluation.evaluate.run_evaluation``;
    ``encoder`` is None when a checkpoint is given (exactly one of the two).
    """

    checkpoint: Path | None = Field(None, description="a geocl pretrain checkpoint (omit it for a random encoder)")
    data: Path = Field(description="an image folder or a folder of CIFAR python batches")
    format: Literal["cifar", "image_folder"] = Field(description="what the data folder holds")
    encoder: str | None = Field(
        None, min_length=1, description="evaluate a randomly initialised encoder of this name instead"
    )
    image_size: Integer | None = Field(
        None, ge=0, description="resize images to this side in px, 0 = as stored (default: as in pretraining)"
    )
    val_fraction: Number | None = Field(
        None, ge=0, lt=1,
        description="image folders without val/: share held out per class (default: as in pretraining)",
    )
    seed: Seed = Field(0, description="seed of the probe (and of a random encoder)")
    out: Path | None = Field(None, description="folder for evaluation.json (default: the checkpoint's run folder)")

    @field_validator("encoder")
    @classmethod
    def _one_encoder(cls, encoder: str | None, info: ValidationInfo) -> str | None:
        checkpoint = info.data.get("checkpoint")
        if checkpoint is not None and encoder is not None:
            raise field_relation("give {checkpoint} or {encoder}, not both", checkpoint="checkpoint", encoder="encoder")
        if checkpoint is None and encoder is None:
            raise field_relation(
                "give {checkpoint} (a pretrain checkpoint) or {encoder} (a randomly initialised encoder)",
                checkpoint="checkpoint", encoder="encoder",
            )
        return encoder


# --------------------------------------------------------------------- predict


class PredictOptions(OptionsModel):
    """``geocl predict``: sliding-window prediction of a whole scene."""

    checkpoint: Path = Field(description="a finetuned checkpoint (made by geocl finetune)")
    scene: Path = Field(description="the GeoTIFF to predict")
    out: Path = Field(description="the prediction GeoTIFF to write")
    polygons: Path | None = Field(None, description="also write the class polygons to this GeoPackage")
    window: Integer = Field(256, ge=MIN_WINDOW, description="side in px of the prediction window")
    overlap: Integer = Field(64, ge=0, description="px shared by neighbouring windows (blended)")

    @field_validator("overlap")
    @classmethod
    def _overlap_inside_window(cls, overlap: int, info: ValidationInfo) -> int:
        window = info.data.get("window")
        if window is not None and overlap >= window:
            raise field_relation(f"must be smaller than {{window}} ({window} px), got {overlap}", window="window")
        return overlap


# --------------------------------------------------------------------- compare


class CompareOptions(OptionsModel):
    """``geocl compare``: pretrain several recipes, finetune (or evaluate) each; one table."""

    recipes: list[Path] = Field(
        min_length=1, description="recipe files; their file names name the pretraining folders, their names the rows"
    )
    label_fractions: list[LabelFraction] = Field(
        [0.01, 0.05, 0.2], min_length=1, description="fractions of the labelled train tiles to finetune with"
    )
    seeds: Integer = Field(3, ge=1, description="training seeds per label subset (seeds 0 .. seeds-1)")
    subset_seeds: Integer | None = Field(
        None, ge=1,
        description="label subsets per fraction, drawn apart from the training seeds (subset seeds 0 .. N-1); "
        "default: each run draws its subset with its training seed",
    )
    baseline: str | None = Field(
        None, description="recipe name the paired differences are taken to (default: the first recipe)"
    )
    pretrain_steps: Integer | None = Field(
        None, ge=1,
        description="pretrain every recipe for this many optimizer steps (overrides their epochs); "
        "default: each recipe's own trainer settings",
    )
    protocol: Literal["finetune", "frozen"] = Field(
        "finetune",
        description="tile sets: finetune a segmenter, or train a dense linear probe on the frozen encoder "
        "(cheap and far less noisy: it measures the representation itself)",
    )
    deterministic: bool = Field(
        False, description="use torch's deterministic algorithms (slower; still not equal across processors)"
    )
    out: Path = Field(Path("runs/compare"), description="the comparison folder")
    overrides: list[str] = Field([], description="dotted recipe override for every recipe, e.g. trainer.max_epochs=1")
    finetune: FinetuneOptions = Field(
        default_factory=FinetuneOptions, description="finetuning of every row (tile sets)"
    )
    evaluate: EvaluateOptions = Field(
        default_factory=EvaluateOptions, description="evaluation of every row (natural images)"
    )

    @field_validator("label_fractions")
    @classmethod
    def _once_each(cls, fractions: list[float]) -> list[float]:
        return list(dict.fromkeys(fractions))  # repeats dropped, order kept
