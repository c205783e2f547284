"""Medical volumes: pretrain SimCLR on 2D slices of NIfTI volumes, finetune a segmenter on a few labelled cases, Dice.

The same methods pretrain on MRI/CT volumes: a recipe with ``data.format: nifti`` reads
``DIR/images/*.nii.gz`` (and ``DIR/labels/*.nii.gz``), resamples every case to one voxel
spacing with MONAI and trains on its 2D slices. The example writes the embedded
synthetic volumes (an organ-like shape in a noisy body, one label), pretrains SimCLR on
the slices of the train cases, then finetunes a 2D U-Net on the slices of a third of
the train cases, from the pretrained encoder and from a random one, and scores both on
whole test volumes: Dice, Jaccard, 95 % Hausdorff distance and average surface distance.
Splits go by case (a patient's slices never sit on both sides of a split).

Your own data: point ``--volumes`` at a folder with ``images/`` and ``labels/`` of NIfTI
files (the same names in both); a ``splits.json`` there fixes the train/val/test cases.

Run:    python examples/04_medical_volumes.py [--out DIR] [--smoke] [--volumes DIR]
Time:   about a minute and a half on 2 CPU cores (--smoke: seconds, tiny sizes, meaningless numbers).
Writes: DIR/volumes/ (NIfTI cases, preview.png), DIR/pretrain/, and DIR/finetune-pretrained/ and
        DIR/finetune-random/ (best.ckpt, cases.csv: per-case metrics, predictions/*.nii.gz,
        plots/*.png, metrics.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import geocl

#: The CPU-sized recipes shipped with geocl, beside this folder.
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples_out/04_medical_volumes"), help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the example runs")
    parser.add_argument("--volumes", type=Path, help="your NIfTI folder (images/, labels/); default: synthetic cases")
    args = parser.parse_args()
    if (args.out / "pretrain").exists():
        # geocl refuses to mix two runs in one folder; say so before any work
        sys.exit(f"error: {args.out} holds an earlier run of this example; delete it or pass another --out")
    geocl.configure_output()  # geocl's own lines only: no Lightning banners, no third-party warnings
    out = args.out

    # 1. The volumes: 10 cases of 48-64 voxels a side (smoke: 5 of 24-30). With 10 cases
    # the fixed case split holds out 2 for test and 2 for validation.
    if args.volumes is None:
        cases, (low, high) = (5, (24, 30)) if args.smoke else (10, (48, 64))
        volumes = geocl.make_volumes(out / "volumes", cases=cases, min_size=low, max_size=high, seed=0)
        data = volumes.root
        print(f"volumes: {len(volumes.images)} cases in {data} (a slice of each: {volumes.preview})")
    else:
        data = args.volumes

    # 2. Pretrain on the slices of the train cases (labelled or not: labels are not read).
    # data.image_size=0 pads every slice to the largest one, rounded up to 32 px.
    overrides = [
        f"data.path={data}",
        f"out={out / 'pretrain'}",
        "data.num_workers=0",
        "data.image_size=0",
        "trainer.max_epochs=-1",
    ]
    if args.smoke:
        overrides += ["encoder.name=test_resnet", "data.view_size=32", "data.batch_size=8", "trainer.max_steps=2"]
    else:
        overrides += ["data.view_size=48", "data.batch_size=32", "trainer.max_steps=25"]
    run = geocl.run_pretrain(geocl.load_recipe(RECIPES / "medical" / "simclr.yaml", overrides))
    print(f"pretrained {run.global_step} steps in {run.seconds:.0f} s, final loss {run.final_loss:.3f}")

    # 3. Few labels: a third of the train cases keep theirs. The same subset (seed) for
    # both encoders, so that their Dice differ by the encoder alone.
    finetune = dict(
        data=data,
        label_fraction=0.34,
        seed=0,
        image_size=0,
        progress=False,
        **(
            dict(max_epochs=1, steps_per_epoch=2, val_every=1, batch_size=4, crop=32)
            if args.smoke
            else dict(max_epochs=4, steps_per_epoch=10, val_every=2, batch_size=8, crop=48)
        ),
    )
    pretrained = geocl.run_medical_finetune(
        out=out / "finetune-pretrained", encoder_checkpoint=run.checkpoint, **finetune
    )
    random = geocl.run_medical_finetune(
        out=out / "finetune-random", encoder="test_resnet" if args.smoke else "resnet18", **finetune
    )

    print(
        f"trained on the slices of {len(pretrained.labelled_cases)} labelled cases; "
        f"mean over {len(pretrained.cases)} test volumes:"
    )
    for name, result in (("pretrained (simclr)", pretrained), ("random init", random)):
        print(
            f"  {name:20s} Dice {result.dice:.3f}  Jaccard {result.jaccard:.3f}  "
            f"95HD {result.hd95:.1f} mm  ASD {result.asd:.1f} mm"
        )
    for case in pretrained.cases:  # per test case, as in cases.csv
        print(f"    {case['case']}: Dice {case['dice']:.3f} (pretrained)")
    print(f"predicted label maps: {out / 'finetune-pretrained' / 'predictions'}")
    # One subset and one seed prove little; for intervals over several, compare the
    # recipes/medical/*.yaml with geocl.run_compare (example 02): nifti recipes are scored by Dice.


if __name__ == "__main__":
    try:
        main()
    except geocl.GeoclError as error:  # a user error: one line, as the geocl command prints it
        sys.exit(f"error: {error}")
