"""geocl: self-supervised contrastive pretraining on geospatial rasters.

The public API, what a user scripts with (each name is imported on first use, so
``import geocl`` stays light and the command line answers bad arguments at once)::

    import geocl

    geocl.make_scene("data/scene")                                  # embedded labelled scene
    geocl.tile_scene("data/scene/image.tif", "data/tiles", mask="data/scene/mask.tif",
                     options=geocl.TilingOptions(size=256))
    tiles = geocl.TileDataset("data/tiles", "train")                # batches of dicts
    recipe = geocl.load_recipe("recipes/simclr.yaml", ["data.tiles=data/tiles", "out=runs/simclr"])
    run = geocl.run_pretrain(recipe)                                 # -> run.checkpoint
    model = geocl.SimCLR("resnet18", in_chans=4, temperature=0.2)    # or a method from Python
    result = geocl.run_finetune(tiles="data/tiles", out="runs/ft", encoder_checkpoint=run.checkpoint)
    geocl.predict_with_checkpoint(result.checkpoint, "data/scene/image.tif", "pred.tif")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from geocl.errors import GeoclError

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC = {
    # data
    "make_scene": "geocl.data.synthetic",
    "tile_scene": "geocl.data.tiler",
    "TilingOptions": "geocl.data.tiler",
    "TileDataset": "geocl.data.tile_dataset",
    "SceneImage": "geocl.data.scene",
    "SceneMask": "geocl.data.scene",
    "labelled_scene": "geocl.data.scene",
    "export_benchmark": "geocl.data.benchmarks",
    "make_volumes": "geocl.data.medical.synthetic",
    # methods
    "METHODS": "geocl.methods",
    "PretrainMethod": "geocl.methods",
    "SimCLR": "geocl.methods",
    "GraSS": "geocl.methods",
    "MoCo": "geocl.methods",
    "MultiNet": "geocl.methods",
    "PatchMix": "geocl.methods",
    "build_method": "geocl.methods",
    "register_method": "geocl.methods",
    # recipes and runs
    "load_recipe": "geocl.methods",
    "run_pretrain": "geocl.training.pretrain",
    "run_finetune": "geocl.finetune.train",
    "run_medical_finetune": "geocl.finetune.medical",
    "run_semi_supervised": "geocl.finetune.semi_supervised",
    "run_medical_semi_supervised": "geocl.finetune.medical_semi_supervised",
    "predict_with_checkpoint": "geocl.finetune.inference",
    "run_compare": "geocl.experiments",
    "run_evaluation": "geocl.evaluation",
    "CompareOptions": "geocl.recipes.compare_options",
    "FinetuneOptions": "geocl.recipes.options",
    # output
    "configure_output": "geocl.console",
}

__all__ = ["GeoclError", "__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'geocl' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
