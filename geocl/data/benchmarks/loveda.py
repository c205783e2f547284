"""LoveDA (0.3 m, RGB), whole or one of its two scenes (urban, rural)."""

from __future__ import annotations

from pathlib import Path

from torchgeo.datasets import LoveDA

from geocl.data.benchmarks.base import Benchmark


def _loveda_id(path: str) -> str:
    # .../Train/Urban/images_png/1366.png -> urban_1366 (numbers repeat across the two scenes)
    image = Path(path)
    return f"{image.parent.parent.name.lower()}_{image.stem}"


#: LoveDA: mask 0 is no-data and 1-7 the classes; TorchGeo's ``classes`` lists the 7
#: classes first (its trailing "no-data" entry names value 0, not value 8).
_LOVEDA_VALUES = tuple(range(1, 8))


def _loveda(name: str, scenes: tuple[str, ...], title: str) -> Benchmark:
    folders = ", ".join(f"{{Train,Val}}/{scene.capitalize()}/{{images_png,masks_png}}/*.png" for scene in scenes)
    return Benchmark(
        name=name,
        title=title,
        dataset_class=LoveDA,
        official_splits={"train": "train", "test": "val"},
        gsd=0.3,
        bands=3,
        class_values=_LOVEDA_VALUES,
        class_names=tuple(LoveDA.classes[:7]),
        mask_nodata=0,
        expected=f"the extracted Train.zip and Val.zip: {folders}",
        dataset_args={"scene": list(scenes)},
        image_id=_loveda_id,
    )


#: LoveDA, both scenes, and each scene alone.
LOVEDA = _loveda("loveda", ("urban", "rural"), "LoveDA")
LOVEDA_URBAN = _loveda("loveda-urban", ("urban",), "LoveDA Urban")
LOVEDA_RURAL = _loveda("loveda-rural", ("rural",), "LoveDA Rural")
