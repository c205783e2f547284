"""Add your own method: register Decoupled Contrastive Learning in ~50 lines and compare it with SimCLR.

A method is a Lightning module built from typed keyword arguments, assembled from small
parts (an encoder geocl builds for any band count, a lightly projection head, a lightly
loss). ``@geocl.register_method("dcl")`` makes ``method.name: dcl`` select it in a recipe,
and the recipe's ``method`` section is derived from the constructor: types, ranges and
defaults are written once, in the signature, and checked before any work. Nothing else
in geocl changes: pretraining, checkpoints, finetuning and ``compare`` take the new
method as they take SimCLR.

The method here is DCL (Yeh et al., "Decoupled Contrastive Learning", ECCV 2022):
SimCLR's NT-Xent without the positive pair in the denominator, which learns better from
small batches, with lightly's ``DCLLoss`` (or ``DCLWLoss``, its weighted variant).

Run:    python examples/05_add_your_own_method.py [--out DIR] [--smoke]
Time:   about a minute and a half on 2 CPU cores (--smoke: seconds, tiny sizes, meaningless numbers).
Writes: DIR/recipes/dcl.yaml (the new method's recipe), DIR/scene/, DIR/tiles/,
        DIR/compare/ (results.csv, results.md, results_summary.csv, results.png, results_paired.png,
        pretrain/dcl/ with the DCL checkpoint). A rerun reuses every finished run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated, Any

import yaml
from lightly.loss import DCLLoss, DCLWLoss
from pydantic import Field
from torch import Tensor

import geocl
from geocl.models import projection_head  # lightly's SimCLR head (Linear-ReLU-Linear)

#: The CPU-sized recipes shipped with geocl, beside this folder.
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


# ---------------------------------------------------------------------- the method


@geocl.register_method("dcl")
class DCL(geocl.PretrainMethod):
    """Decoupled contrastive learning on multi-band tiles.

    For the L2-normalised projections u_i, v_i of two views of image i, with s the
    cosine similarity and τ the temperature (summed over both views' roles):

        L_i = -s(u_i, v_i)/τ + log Σ_{j≠i} [exp(s(u_i, u_j)/τ) + exp(s(u_i, v_j)/τ)]

    NT-Xent's denominator also holds exp(s(u_i, v_i)/τ); dropping it removes the
    coupling of the positive and negative gradients that slows small-batch training.

    Args:
        encoder, in_chans, **common: see :class:`geocl.PretrainMethod` (views, optimizer, ...).
        temperature: τ (DCL's default 0.1).
        hidden_dim: projection head hidden width.
        output_dim: embedding size.
        weighted: weight the positive term by the von Mises-Fisher weighting of DCLW.
        sigma: DCLW's weighting scale (used with ``weighted``).
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        in_chans: int = 3,
        *,
        temperature: Annotated[float, Field(gt=0)] = 0.1,
        hidden_dim: Annotated[int, Field(ge=1)] = 512,
        output_dim: Annotated[int, Field(ge=1)] = 128,
        weighted: bool = False,
        sigma: Annotated[float, Field(gt=0)] = 0.5,
        **common: Any,
    ) -> None:
        super().__init__(encoder, in_chans, **common)  # builds self.encoder and self.views, validates self.params
        params = self.params
        self.head = projection_head(self.encoder.num_features, params.hidden_dim, params.output_dim)
        # gather_distributed: on N devices the negatives of all devices take part, as on one device
        self.criterion = (
            DCLWLoss(params.temperature, params.sigma, gather_distributed=True)
            if params.weighted
            else DCLLoss(params.temperature, gather_distributed=True)
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        view_a, view_b = self.views(batch["image"])  # two augmented views, [B, C, S, S] each
        loss = self.criterion(self.head(self.encoder(view_a)), self.head(self.encoder(view_b)))
        loss = self.check_finite(loss)  # a NaN stops the run with one line naming the last good checkpoint
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=len(view_a))
        return loss


# ------------------------------------------------------------------ using it


def write_recipe(folder: Path) -> Path:
    """The SimCLR recipe with the method section swapped for DCL's: same data, encoder, budget."""
    recipe = yaml.safe_load((RECIPES / "simclr.yaml").read_text())
    recipe["name"] = "dcl"
    recipe["method"] = {"name": "dcl", "temperature": 0.1, "hidden_dim": 512, "output_dim": 128}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dcl.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples_out/05_add_your_own_method"), help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the example runs")
    args = parser.parse_args()
    geocl.configure_output()  # geocl's own lines only: no Lightning banners, no third-party warnings
    out = args.out

    # The registry now holds the new method, and its recipe keys are checked like any other:
    # geocl.load_recipe(recipe, ["method.temprature=0.2"]) fails with "did you mean 'method.temperature'?".
    print(f"registered methods: {', '.join(geocl.METHODS)}")
    recipe = write_recipe(out / "recipes")
    print(f"recipe of the new method: {recipe}")

    # Data as in examples 01 and 02 (smoke: tiny scene, tiny encoder).
    size, tile = (256, 32) if args.smoke else (1024, 64)
    scene = geocl.make_scene(out / "scene", size=size, seed=0)
    geocl.tile_scene(
        scene.image,
        out / "tiles",
        mask=scene.mask,
        progress=False,
        options=geocl.TilingOptions(size=tile, stride=tile, split_block=size // 4, seed=0),
    )

    # Compare it with SimCLR exactly as two built-in recipes are compared (example 02):
    # same step budget, same label subsets, frozen-encoder probe, paired intervals.
    overrides = [f"data.tiles={out / 'tiles'}", "data.num_workers=0"]
    if args.smoke:
        overrides += ["encoder.name=test_resnet", "data.view_size=32", "data.batch_size=8"]
        steps, subsets = 2, 2
        probe = geocl.FinetuneOptions(
            max_epochs=1, steps_per_epoch=2, val_every=1, batch_size=4, crop=32, progress=False
        )
    else:
        overrides += ["data.view_size=48", "data.batch_size=32"]
        steps, subsets = 15, 3  # 3 subsets: a first look; a verdict needs 6 (example 02)
        probe = geocl.FinetuneOptions(
            max_epochs=3, steps_per_epoch=10, val_every=3, batch_size=8, crop=tile, progress=False
        )
    rows = geocl.run_compare(
        geocl.CompareOptions(
            recipes=[RECIPES / "simclr.yaml", recipe],
            label_fractions=[0.1],
            subset_seeds=subsets,
            seeds=1,
            pretrain_steps=steps,
            protocol="frozen",
            baseline="simclr",
            out=out / "compare",
            overrides=overrides,
            finetune=probe,
        )
    )
    if (rows["status"] != "ok").any():
        sys.exit(f"error: some runs failed; see {out / 'compare' / 'results.md'}")
    # The checkpoint names the method, so finetuning or predicting from it needs no
    # registration (the encoder is loaded by attribute); pretraining again does.
    print(f"DCL encoder: {out / 'compare' / 'pretrain' / 'dcl' / 'checkpoints' / 'last.ckpt'}")


if __name__ == "__main__":
    try:
        main()
    except geocl.GeoclError as error:  # a user error: one line, as the geocl command prints it
        sys.exit(f"error: {error}")
