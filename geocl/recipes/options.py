"""The options of ``geocl tile``, ``finetune``, ``evaluate``, ``predict``, ``index``, ``search`` and ``serve``.

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
  :class:`TileOptions` and :class:`PredictOptions` a whole command's.
  ``geocl compare``'s own, which hold these as sections, are in
  :mod:`geocl.recipes.compare_options`.
* ``*Command`` add a command's own inputs to the settings: :class:`FinetuneCommand`
  (tile set, run folder, encoder, label fraction, seed) and :class:`EvaluateCommand`.
  Their field names are the keyword arguments of the function the command calls.

Field names are the library's names; the CLI maps a few to the flags users know
(``max_epochs`` is ``--epochs``). The models Python callers build from their defaults
(the sections of ``CompareOptions``) name them ``default=``, the form a type checker
reads. Importing this module imports pydantic only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from geocl.recipes.errors import field_relation
from geocl.recipes.schema import BenchmarkDataset
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
#: ``geocl.finetune.predict.TILE`` and ``DEFAULT_BLOCK`` (px), repeated for the same reason.
PREDICT_TILE = 256
PREDICT_BLOCK = 4096
#: The encoder stages the dense linear probe can read, 1 (stem, stride 2) to 5 (deepest, stride 32):
#: ``geocl.finetune.linear_probe.ENCODER_STAGES``, repeated for the same reason.
PROBE_STAGES = (1, 2, 3, 4, 5)


class OptionsModel(BaseModel):
    """Base of the option models: unknown keys are refused and defaults validated too
    (so cross-field rules see every field)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# ------------------------------------------------------------------------ tile


class TileOptions(OptionsModel):
    """``geocl tile``: cut a scene into tiles with a GeoPackage index, or a TorchGeo benchmark
    dataset (``dataset`` and ``root``) into tiles of its official splits."""

    scene: list[Path] | None = Field(
        None,
        description="a GeoTIFF or a folder of GeoTIFFs (or give --dataset); several scenes are tiled each into "
        "OUT/<scene name>/, one Dask task a scene",
    )
    out: Path = Field(description="output folder (rerun the same command to resume)")
    dataset: BenchmarkDataset | None = Field(
        None, description="tile a TorchGeo benchmark dataset instead of a scene (read from --root, never downloaded)"
    )
    root: Path | None = Field(None, description="with --dataset: the folder holding it in TorchGeo's layout")
    mask: list[Path] | None = Field(
        None, description="one-band class mask (a file or a folder); with several scenes, one a scene in their order"
    )
    mask_nodata: Integer | None = Field(
        None,
        ge=-(2**31),
        lt=2**31,
        description="mask value that means unlabelled when the mask file sets no nodata (0 is common): "
        "left out of the classes, the loss and the metrics",
    )
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
    val_fraction: Number = Field(
        0.15, ge=0, lt=1, description="with --dataset: share of the official train images held out as val"
    )
    seed: Seed = Field(0, description="seed of the block-to-split draw (with --dataset: of the val images)")
    quiet: bool = Field(False, description="no progress bars")
    workers: Integer | None = Field(
        None,
        ge=0,
        description="several scenes: worker processes of the local Dask cluster (default: one a scene, at most "
        "one a CPU; 0: one scene after the other in this process)",
    )
    scheduler: str | None = Field(
        None,
        min_length=1,
        description="several scenes: address of a running Dask scheduler to use instead of a local cluster, "
        "e.g. tcp://10.0.0.5:8786 (its workers must see the same paths)",
    )

    @field_validator("scene", "mask", mode="before")
    @classmethod
    def _paths_as_list(cls, paths: Any) -> Any:
        if isinstance(paths, (str, Path)):
            return [paths]
        return None if isinstance(paths, list) and not paths else paths

    @field_validator("mask")
    @classmethod
    def _one_mask_a_scene(cls, masks: list[Path] | None, info: ValidationInfo) -> list[Path] | None:
        scenes = info.data.get("scene")
        if masks is not None and scenes is not None and len(masks) != len(scenes):
            raise field_relation(
                f"give one a {{scene}}, in the same order: {len(scenes)} scenes but {len(masks)} masks", scene="scene"
            )
        return masks

    @field_validator("mask_nodata")
    @classmethod
    def _unlabelled_needs_a_mask(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("mask") is None and info.data.get("dataset") is None:
            raise field_relation("needs a class mask: give {mask} too", mask="mask")
        return value

    @field_validator("scheduler")
    @classmethod
    def _one_cluster(cls, scheduler: str | None, info: ValidationInfo) -> str | None:
        if scheduler is not None and info.data.get("workers") is not None:
            raise field_relation(
                "give {workers} (a local cluster) or a scheduler (a running one), not both", workers="workers"
            )
        return scheduler

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
                    size="size",
                    stride="stride",
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

    @model_validator(mode="after")
    def _scene_or_dataset(self) -> TileOptions:
        # options the user gave (not defaults) that the other kind of input does not read
        given = self.model_fields_set
        if self.dataset is None:
            if self.scene is None:
                rule = field_relation(
                    "give a scene (a GeoTIFF or a folder of them), or {dataset} with {root}",
                    dataset="dataset",
                    root="root",
                )
                raise error_at("TileOptions", "scene", None, rule)
            for name in ("root", "val_fraction"):
                if name in given:
                    raise error_at(
                        "TileOptions",
                        name,
                        getattr(self, name),
                        field_relation("is read only with {dataset}", dataset="dataset"),
                    )
            for name in ("workers", "scheduler"):
                if name in given and len(self.scene) == 1:
                    rule = field_relation("runs several scenes on Dask; one {scene} is tiled here", scene="scene")
                    raise error_at("TileOptions", name, getattr(self, name), rule)
            return self
        if self.scene is not None:
            rule = field_relation("give a scene or {dataset}, not both", dataset="dataset")
            raise error_at("TileOptions", "scene", " ".join(str(path) for path in self.scene), rule)
        if self.root is None:
            rule = field_relation("is required with {dataset}: the folder that holds the dataset", dataset="dataset")
            raise error_at("TileOptions", "root", None, rule)
        for name in ("mask", "mask_nodata", "roi", "max_nodata", "split_block", "split", "workers", "scheduler"):
            if name in given:
                rule = field_relation(
                    "applies to a scene; {dataset} keeps the dataset's official splits and masks (see {val_fraction})",
                    dataset="dataset",
                    val_fraction="val_fraction",
                )
                raise error_at("TileOptions", name, getattr(self, name), rule)
        return self


def error_at(model: str, where: str | tuple[str, ...], value: Any, error: PydanticCustomError) -> ValidationError:
    """A rule over several fields, reported at field ``where`` (a name, or the path to a section's field)."""
    loc = (where,) if isinstance(where, str) else where
    return ValidationError.from_exception_data(model, [{"type": error, "loc": loc, "input": value}])


# -------------------------------------------------------------------- finetune


class FinetuneOptions(OptionsModel):
    """How a segmentation model is finetuned (what ``geocl compare`` passes to every row).

    ``max_epochs``, ``steps_per_epoch``, ``val_every``, ``patience``, ``batch_size``,
    ``num_workers``, ``accelerator`` and ``progress`` are the training budget of every
    downstream training (``geocl.finetune.downstream.TrainingBudget``: the same names and
    defaults, validated here); ``arch``, ``lr``, ``crop``, ``freeze_encoder`` and
    ``probe_stages`` choose the segmenter (``geocl.finetune.train.SegmenterFactory``).

    ``probe_stages`` applies to ``arch: linear`` alone (the frozen protocol's dense linear
    probe); the models holding this one refuse it with another ``arch``
    (:class:`FinetuneCommand`) or protocol (``CompareOptions``). Left unset (None: every
    stage) it is left out of :meth:`model_dump`, so the trainings that have no probe take
    the dump as keyword arguments, and what compare records of a row is what it recorded
    before the option existed.
    """

    arch: Literal["unet", "deeplabv3plus", "dpt", "linear"] = Field(
        default="unet",
        description="segmentation decoder (a ViT encoder always gets dpt); linear: the frozen dense linear probe",
    )
    max_epochs: Integer = Field(default=15, ge=1, description="finetuning epochs (each of a fixed number of steps)")
    steps_per_epoch: Integer = Field(
        default=10, ge=1, description="optimizer steps per epoch (the same for every label fraction)"
    )
    val_every: Integer = Field(default=3, ge=1, description="epochs between validations")
    patience: Integer = Field(default=3, ge=0, description="validations without val-mIoU gain before stopping early")
    batch_size: Integer = Field(default=8, ge=1, description="tiles per step")
    lr: Number = Field(default=1e-3, gt=0, description="AdamW learning rate")
    crop: Integer = Field(default=128, ge=8, description="side in px of the random training crops")
    freeze_encoder: bool = Field(default=False, description="train the decoder only")
    num_workers: Integer = Field(default=0, ge=0, description="DataLoader worker processes")
    accelerator: Accelerator = Field(default="auto", description="device to train on")
    progress: bool = Field(default=True, description="show progress bars")
    probe_stages: list[Annotated[Integer, Field(ge=PROBE_STAGES[0], le=PROBE_STAGES[-1])]] | None = Field(
        default=None,
        min_length=1,
        description="arch linear (the frozen protocol) only: the encoder stages the dense linear probe reads, "
        "1 (stem, stride 2) to 5 (deepest, stride 32; ResNet: 2-5 = layer1-layer4), e.g. 4 5 for the deep "
        "features alone (default: every stage)",
    )

    @field_validator("probe_stages")
    @classmethod
    def _stages_once_each(cls, stages: list[int] | None) -> list[int] | None:
        return None if stages is None else sorted(set(stages))

    @model_serializer(mode="wrap")
    def _unset_stages_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("probe_stages", ...) is None:
            del data["probe_stages"]
        return data


class FinetuneCommand(FinetuneOptions):
    """``geocl finetune``: the settings plus the data, the encoder and the label fraction.

    The field names are the keyword arguments of ``geocl.finetune.train.run_finetune``
    (the budget's and ``logger`` through its ``**budget``).
    """

    tiles: Path = Field(description="a tile set with masks (made by geocl tile with a mask)")
    out: Path = Field(description="run folder (checkpoints/, logs/, metrics.json)")
    encoder_checkpoint: Path | None = Field(None, description="a geocl pretrain checkpoint (default: random init)")
    encoder: str = Field(
        "resnet18",
        min_length=1,
        description="encoder of a random init or of --encoder-weights (a checkpoint brings its own)",
    )
    encoder_weights: str = Field(
        "",
        description="weights the encoder starts from without a checkpoint: a TorchGeo weights name, a timm "
        "pretrained tag or a file (read offline, never downloaded)",
    )
    label_fraction: LabelFraction = Field(0.05, description="fraction of the train tiles with labels, in (0, 1]")
    seed: Seed = Field(0, description="seed of the label subset, the init and the training order")
    logger: Literal["csv", "tensorboard", "mlflow"] = Field(
        "csv", description="experiment logger beside the CSV log (tensorboard, mlflow: pip install 'geocl[loggers]')"
    )

    @model_validator(mode="after")
    def _stages_need_the_probe(self) -> FinetuneCommand:
        if self.probe_stages is not None and self.arch != "linear":
            rule = field_relation(
                f"applies to the dense linear probe only: give {{arch}} linear, not {self.arch}", arch="arch"
            )
            raise error_at("FinetuneCommand", "probe_stages", self.probe_stages, rule)
        return self


# -------------------------------------------------------------------- evaluate


class EvaluateOptions(OptionsModel):
    """How a frozen encoder is evaluated on natural images (kNN and linear probe)."""

    k: Integer = Field(default=20, ge=1, description="kNN neighbours")
    temperature: Number = Field(default=0.07, gt=0, description="kNN vote temperature")
    probe_epochs: Integer = Field(default=100, ge=1, description="linear-probe epochs")
    probe_lr: Number = Field(default=0.1, gt=0, description="linear-probe SGD learning rate")
    batch_size: Integer = Field(default=256, ge=1, description="images per forward pass")
    num_workers: Integer = Field(default=0, ge=0, description="DataLoader worker processes")
    momentum_encoder: bool = Field(
        default=False,
        description="evaluate the momentum (EMA) encoder (MoCo, PatchMix, MultiNet), as the PatchMix paper does",
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
        None,
        ge=0,
        lt=1,
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
                checkpoint="checkpoint",
                encoder="encoder",
            )
        return encoder


# --------------------------------------------------------------------- predict


class PredictSettings(OptionsModel):
    """How a scene is predicted: the settings of ``geocl predict`` that name no file.

    What ``geocl.distributed.predict_scenes`` takes as ``options`` (the same for every
    scene of a batch run by workers); :class:`PredictOptions` adds the command's files.
    """

    window: Integer = Field(256, ge=MIN_WINDOW, description="side in px of the prediction window")
    overlap: Integer = Field(64, ge=0, description="px shared by neighbouring windows (blended)")
    batch_size: Integer = Field(8, ge=1, description="windows per model call")
    tta: bool = Field(
        False, description="average each window's prediction over its 8 flips and rotations (8x the model calls)"
    )
    probabilities: Literal["uint8", "float16"] | None = Field(
        None,
        description="also write per-class probabilities to OUT_probabilities.tif: uint8 (0-254 = 0-1, 255 nodata) "
        "or float16",
    )
    cog: bool = Field(True, description="write Cloud-Optimized GeoTIFFs (internal tiles and overviews)")
    block: Integer = Field(
        PREDICT_BLOCK,
        ge=PREDICT_TILE,
        description=f"width in px (a multiple of {PREDICT_TILE}) of the column blocks predicted at a time "
        "(polygons: blocks of at most 1024 px); memory grows with it, not with the scene",
    )

    @field_validator("overlap")
    @classmethod
    def _overlap_inside_window(cls, overlap: int, info: ValidationInfo) -> int:
        window = info.data.get("window")
        if window is not None and overlap >= window:
            raise field_relation(f"must be smaller than {{window}} ({window} px), got {overlap}", window="window")
        return overlap

    @field_validator("block")
    @classmethod
    def _whole_tiles(cls, block: int) -> int:
        if block % PREDICT_TILE:
            raise ValueError(f"must be a multiple of {PREDICT_TILE} px (the output's tile)")
        return block


class PredictOptions(PredictSettings):
    """``geocl predict``: sliding-window prediction of a whole scene (the settings plus the files).

    The field names are keyword arguments of ``geocl.finetune.inference.predict_with_checkpoint``.
    """

    checkpoint: Path = Field(description="a finetuned checkpoint (made by geocl finetune)")
    scene: list[Path] = Field(
        min_length=1, description="the GeoTIFF to predict; a folder or several files are predicted as one mosaic"
    )
    out: Path = Field(
        description="the prediction GeoTIFF to write (with --workers or --scheduler: a folder, one sub-folder a scene)"
    )
    polygons: Path | None = Field(None, description="also write the class polygons to this GeoPackage")

    @field_validator("scene", mode="before")
    @classmethod
    def _one_scene_is_a_list(cls, scene: Any) -> Any:
        return [scene] if isinstance(scene, (str, Path)) else scene


class PredictCommand(PredictOptions):
    """``geocl predict``: :class:`PredictOptions` plus running each scene on its own, on Dask.

    ``workers`` or ``scheduler`` make each SCENE a scene of its own, predicted into
    ``OUT/<scene name>/`` by ``geocl.distributed.predict_scenes``; without them the
    scenes are one mosaic, as :class:`PredictOptions` says.
    """

    workers: Integer | None = Field(
        None,
        ge=0,
        description="predict each SCENE as a scene of its own, into OUT/<scene name>/, on a local Dask cluster "
        "of this many worker processes (0: one scene after the other in this process)",
    )
    scheduler: str | None = Field(
        None,
        min_length=1,
        description="as --workers, on the running Dask cluster whose scheduler listens at this address, "
        "e.g. tcp://10.0.0.5:8786 (its workers must see the same paths)",
    )

    @field_validator("scheduler")
    @classmethod
    def _one_cluster(cls, scheduler: str | None, info: ValidationInfo) -> str | None:
        if scheduler is not None and info.data.get("workers") is not None:
            raise field_relation(
                "give {workers} (a local cluster) or a scheduler (a running one), not both", workers="workers"
            )
        if (scheduler is not None or info.data.get("workers") is not None) and info.data.get("polygons") is not None:
            raise field_relation(
                "polygons are written for one scene: predict several scenes without {polygons}", polygons="polygons"
            )
        return scheduler

    @property
    def many_scenes(self) -> bool:
        """Each scene on its own, on Dask (``workers`` or ``scheduler`` given)."""
        return self.workers is not None or self.scheduler is not None


# ------------------------------------------------------------------- retrieval


class IndexOptions(OptionsModel):
    """``geocl index``: embed every tile of a tile set once, with its footprint, path and caption."""

    checkpoint: Path = Field(description="a checkpoint of the retrieval method (geocl pretrain recipes/retrieval.yaml)")
    tiles: Path = Field(description="a tile set written by geocl tile")
    out: Path = Field(description="the index folder")
    split: Literal["train", "val", "test"] | None = Field(
        None, description="index one split only (default: every tile)"
    )
    batch_size: Integer = Field(64, ge=1, description="tiles per forward pass")
    thumbnail_px: Integer = Field(96, ge=8, le=512, description="side of the thumbnails in px")
    overwrite: bool = Field(False, description="replace an index already in --out")


class SearchOptions(OptionsModel):
    """``geocl search``: the top tiles of an index for a text query."""

    index: Path = Field(description="an index folder written by geocl index")
    query: str = Field(description='what the tiles should show, e.g. "river next to farmland"')
    k: Integer = Field(10, ge=1, description="tiles to return")
    gpkg: Path | None = Field(None, description="also write the hits' footprints and scores to this GeoPackage")
    png: Path | None = Field(None, description="also write a contact sheet of the hits to this PNG")


class ServeOptions(OptionsModel):
    """``geocl serve``: a local search page over an index."""

    index: Path = Field(description="an index folder written by geocl index")
    host: str = Field(
        "127.0.0.1", min_length=1, description="address to listen on (0.0.0.0 shares the page on the network)"
    )
    port: Integer = Field(8000, ge=0, le=65535, description="TCP port (0: any free one)")
    k: Integer = Field(10, ge=1, le=100, description="results the page shows by default")
