"""Compare two pretraining recipes on the same label subsets, and read the 95 % intervals.

One finetuning run proves nothing: on a few labelled tiles the seed alone moves mIoU by
more than methods differ. geocl's compare therefore scores every recipe (and a random
encoder, always added) on the same label subsets, so that runs pair up, and reports each
recipe's mean with its 95 % t interval and its paired difference to a baseline recipe
with a 95 % bootstrap interval over the pairs. This example compares SimCLR and GraSS
on the embedded scene, on one pretraining budget and six label subsets, scored by the
frozen protocol (a dense linear probe on the frozen encoder: cheap, and far less noisy
than finetuning), then reads the intervals back from results_summary.csv and says what
they allow.

Run:    python examples/02_compare_recipes.py [--out DIR] [--smoke]
Time:   about two minutes on 2 CPU cores (--smoke: seconds, tiny sizes, meaningless numbers).
Writes: DIR/scene/, DIR/tiles/, DIR/compare/ (results.csv, results.md, results_summary.csv,
        results.png, results_paired.png, pretraining.csv, pretrain/ and frozen/ run folders).
        A rerun reuses every finished run and only rewrites the table.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

import geocl

#: The CPU-sized recipes shipped with geocl, beside this folder.
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def interval(low: float, high: float) -> str:
    """``[low, high]``, or a dash where one run gives no interval."""
    return "[–]" if math.isnan(low) else f"[{low:.3f}, {high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples_out/02_compare_recipes"), help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the example runs")
    args = parser.parse_args()
    geocl.configure_output()  # geocl's own lines only: no Lightning banners, no third-party warnings
    out = args.out

    # The data, as in example 01 (smoke: tiny scene, tiny encoder).
    size, tile = (256, 32) if args.smoke else (1024, 64)
    scene = geocl.make_scene(out / "scene", size=size, seed=0)
    tiling = geocl.tile_scene(
        scene.image,
        out / "tiles",
        mask=scene.mask,
        progress=False,
        options=geocl.TilingOptions(size=tile, stride=tile, split_block=size // 4, seed=0),
    )
    print(tiling.describe().splitlines()[0])

    # Overrides apply to every recipe, so both pretrain on the same tiles, views and batch.
    # pretrain_steps gives both the same number of optimizer steps (their epochs are
    # lifted): with 32-tile batches that is 4 epochs, so GraSS (2 warm-up epochs of
    # SimCLR) spends half of them in its gradient-guided stage.
    overrides = [f"data.tiles={out / 'tiles'}", "data.num_workers=0"]
    if args.smoke:
        overrides += ["encoder.name=test_resnet", "data.view_size=32", "data.batch_size=8"]
        steps, subsets = 2, 2
        probe = geocl.FinetuneOptions(
            max_epochs=1, steps_per_epoch=2, val_every=1, batch_size=4, crop=32, progress=False
        )
    else:
        overrides += ["data.view_size=48", "data.batch_size=32"]
        # 6 subsets: the fewest paired runs for which the report gives a verdict (below,
        # pairs that merely share a sign would pass the bootstrap interval too often)
        steps, subsets = 20, 6
        probe = geocl.FinetuneOptions(
            max_epochs=3, steps_per_epoch=10, val_every=3, batch_size=8, crop=tile, progress=False
        )

    options = geocl.CompareOptions(
        recipes=[RECIPES / "simclr.yaml", RECIPES / "grass.yaml"],
        label_fractions=[0.1],  # 10 % of the train tiles keep their labels
        subset_seeds=subsets,  # ... drawn `subsets` times: every recipe meets the same subsets
        seeds=1,  # one training seed per subset (more seeds: more pairs, more time)
        pretrain_steps=steps,
        protocol="frozen",
        baseline="simclr",  # the paired differences are taken to this recipe's runs
        out=out / "compare",
        overrides=overrides,
        finetune=probe,
    )
    # run_compare prints one line per run and, at the end, the markdown table (results.md);
    # it returns the rows of results.csv, failed runs included (status other than "ok").
    rows = geocl.run_compare(options)
    failed = rows[rows["status"] != "ok"]
    if len(failed):
        sys.exit(f"error: {len(failed)} run(s) failed; see {out / 'compare' / 'results.md'}")

    # Reading the intervals. results_summary.csv has one row per recipe and label fraction:
    # mean and [low, high] (95 % t interval over its runs), and for every recipe but the
    # baseline delta and [delta_low, delta_high] (paired difference to the baseline, 95 %
    # bootstrap interval over the pairs), wins/losses and a verdict.
    summary = pd.read_csv(out / "compare" / "results_summary.csv")
    print("\nwhat the intervals say:")
    for row in summary.itertuples():
        line = f"  {row.recipe:12s} mIoU {row.mean:.3f} {interval(row.low, row.high)} over {row.n} runs"
        if isinstance(row.verdict, str):  # not the baseline
            line += (
                f"; vs simclr {row.delta:+.3f} {interval(row.delta_low, row.delta_high)}"
                f" ({row.wins:.0f} wins, {row.losses:.0f} losses): {row.verdict}"
            )
        print(line)
    # "not distinguishable": the paired interval covers 0, the runs cannot tell the two
    # recipes apart. "too few pairs": it excludes 0, but from fewer than 6 pairs, which
    # all share a sign by chance too often to mean anything. "better"/"worse": a verdict.
    # Narrow an interval with more subsets (subset_seeds) or seeds, never by rerunning
    # until one run looks good.
    print(f"plots: {out / 'compare' / 'results.png'}, {out / 'compare' / 'results_paired.png'}")


if __name__ == "__main__":
    try:
        main()
    except geocl.GeoclError as error:  # a user error: one line, as the geocl command prints it
        sys.exit(f"error: {error}")
