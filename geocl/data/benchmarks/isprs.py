"""The ISPRS 2D semantic labelling benchmarks: Potsdam (5 cm, RGB+IR) and Vaihingen (9 cm, IR-R-G)."""

from __future__ import annotations

from pathlib import Path

from torchgeo.datasets import Potsdam2D, Vaihingen2D

from geocl.data.benchmarks.base import Benchmark


def _potsdam_id(path: str) -> str:
    return Path(path).name.removesuffix("_RGBIR.tif")


_ISPRS_VALUES = tuple(range(len(Potsdam2D.classes)))

#: ISPRS Potsdam, TorchGeo's :class:`~torchgeo.datasets.Potsdam2D`.
POTSDAM = Benchmark(
    name="potsdam",
    title="ISPRS Potsdam",
    dataset_class=Potsdam2D,
    official_splits={"train": "train", "test": "test"},
    gsd=0.05,
    bands=4,
    class_values=_ISPRS_VALUES,
    class_names=tuple(Potsdam2D.classes),
    mask_nodata=None,
    expected=(
        "4_Ortho_RGBIR/top_potsdam_<area>_RGBIR.tif images with top_potsdam_<area>_label.tif masks beside "
        "that folder, or 4_Ortho_RGBIR.zip and 5_Labels_all.zip"
    ),
    image_id=_potsdam_id,
)

#: ISPRS Vaihingen, TorchGeo's :class:`~torchgeo.datasets.Vaihingen2D`.
VAIHINGEN = Benchmark(
    name="vaihingen",
    title="ISPRS Vaihingen",
    dataset_class=Vaihingen2D,
    official_splits={"train": "train", "test": "test"},
    gsd=0.09,
    bands=3,
    class_values=_ISPRS_VALUES,
    class_names=tuple(Vaihingen2D.classes),
    mask_nodata=None,
    expected=(
        "top/top_mosaic_09cm_area<N>.tif images with masks of the same names beside that folder, or "
        "ISPRS_semantic_labeling_Vaihingen.zip and ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip"
    ),
)
