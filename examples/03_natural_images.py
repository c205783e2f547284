"""Natural images: pack images as CIFAR-10 python batches, pretrain SimCLR on them, score by kNN and linear probe.

The same methods that pretrain on GeoTIFF tiles pretrain on photos. geocl reads CIFAR-10/100
"python version" batches (and image folders, one sub-folder a class); this example writes
its own small CIFAR-10-style folder, so it shows the format your own images must take:
each batch file is a pickled dict with ``data`` (uint8 ``[N, 3072]``: the red, green and
blue 32 x 32 planes of each image, row by row) and ``labels`` (N ints); ``batches.meta``
names the classes. The pictures here are toy ones whose class shows in their colour and
stripes (:func:`geocl.data.natural_toy.toy_images`), so a pretrained encoder can beat a
random one. Encoders are scored, frozen, by weighted cosine kNN and a linear probe (top-1
on the test batch), the pretrained one against a random one of the same architecture.

Run:    python examples/03_natural_images.py [--out DIR] [--smoke]
Time:   about a minute on 2 CPU cores (--smoke: seconds, tiny sizes, meaningless numbers).
Writes: DIR/cifar/ (data_batch_1, data_batch_2, test_batch, batches.meta),
        DIR/pretrain/ (checkpoints, plots/loss.png), DIR/eval-pretrained/ and
        DIR/eval-random/ (evaluation.json each).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

import geocl
from geocl.data.natural_toy import toy_images  # toy pictures; put your own uint8 [N, 3, 32, 32] here

#: The CPU-sized recipes shipped with geocl, beside this folder.
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """One CIFAR-10 batch file: images uint8 ``[N, 3, 32, 32]``, labels ``[N]``."""
    content = {
        "batch_label": path.name,
        "data": images.reshape(len(images), 3 * 32 * 32),  # R plane, G plane, B plane, each row-major
        "labels": [int(label) for label in labels],
        "filenames": [f"{path.name}_{index:05d}.png" for index in range(len(images))],
    }
    with path.open("wb") as handle:
        pickle.dump(content, handle, protocol=2)  # protocol 2: what the official files use


def write_cifar(folder: Path, per_class: int, test_per_class: int) -> Path:
    """A CIFAR-10-style folder: two training batches, a test batch and the class names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train = rng.permutation(np.repeat(np.arange(len(CLASSES)), per_class))
    test = rng.permutation(np.repeat(np.arange(len(CLASSES)), test_per_class))
    for number, labels in enumerate(np.array_split(train, 2), start=1):
        write_cifar_batch(folder / f"data_batch_{number}", toy_images(labels, len(CLASSES), 32, seed=number), labels)
    write_cifar_batch(folder / "test_batch", toy_images(test, len(CLASSES), 32, seed=0), test)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump(
            {"label_names": CLASSES, "num_cases_per_batch": len(train) // 2, "num_vis": 3072}, handle, protocol=2
        )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples_out/03_natural_images"), help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the example runs")
    args = parser.parse_args()
    if (args.out / "pretrain").exists():
        # geocl refuses to mix two runs in one folder; say so before any work
        sys.exit(f"error: {args.out} holds an earlier run of this example; delete it or pass another --out")
    geocl.configure_output()  # geocl's own lines only: no Lightning banners, no third-party warnings
    out = args.out

    # 1. The data: 10 classes, 60 training and 20 test images each (smoke: 8 and 4).
    per_class, test_per_class = (8, 4) if args.smoke else (60, 20)
    cifar = write_cifar(out / "cifar", per_class, test_per_class)
    print(f"CIFAR-10-style batches: {cifar} ({per_class * 10} train, {test_per_class * 10} test images)")

    # 2. Pretrain SimCLR with the natural-image recipe: data.format cifar, photos' own
    # augmentations (no vertical flips or quarter turns: photos have an up).
    overrides = [f"data.path={cifar}", f"out={out / 'pretrain'}", "data.num_workers=0"]
    encoder = "test_resnet" if args.smoke else "resnet18"
    if args.smoke:
        overrides += [f"encoder.name={encoder}", "data.batch_size=16", "trainer.max_epochs=1", "trainer.max_steps=2"]
    else:
        overrides += ["data.batch_size=60", "trainer.max_epochs=6"]  # 10 steps an epoch
    run = geocl.run_pretrain(geocl.load_recipe(RECIPES / "natural" / "simclr.yaml", overrides))
    print(f"pretrained {run.global_step} steps in {run.seconds:.0f} s, final loss {run.final_loss:.3f}")

    # 3. Score both encoders, frozen: kNN (k neighbours vote, weighted by cosine
    # similarity) and a linear classifier on the features, top-1 on the test batch.
    # The random encoder is the baseline a pretraining has to beat.
    scoring = dict(k=5 if args.smoke else 20, probe_epochs=2 if args.smoke else 50, batch_size=128)
    pretrained = geocl.run_evaluation(run.checkpoint, cifar, "cifar", out=out / "eval-pretrained", **scoring)
    random = geocl.run_evaluation(None, cifar, "cifar", out=out / "eval-random", encoder=encoder, **scoring)
    print(f"top-1 on {pretrained.val_images} test images ({pretrained.num_classes} classes, chance {1 / 10:.2f}):")
    for name, result in (("pretrained (simclr)", pretrained), ("random init", random)):
        print(f"  {name:20s} kNN {result.knn_top1:.3f}   linear probe {result.probe_top1:.3f}")
    # Several recipes with intervals over seeds: geocl.run_compare on recipes/natural/*.yaml
    # (see example 02; natural images are scored by this kNN + probe evaluation).


if __name__ == "__main__":
    try:
        main()
    except geocl.GeoclError as error:  # a user error: one line, as the geocl command prints it
        sys.exit(f"error: {error}")
