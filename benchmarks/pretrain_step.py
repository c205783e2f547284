"""Step-time ratios of pretraining methods, measured in one run with one batch size.

Prints the median optimizer-step time (data already in memory, same kornia views) of

  * every method of the CPU recipes under ``recipes/`` (their method sections and
    encoders; GraSS in stage 2), through Lightning's Trainer, relative to SimCLR with
    the same encoder: ResNet-18 for the CNN methods; for PatchMix's ViT-Tiny, SimCLR with
    that ViT too, so each ratio compares the same encoder size class;
  * SPPS's one-off cost: mining the pairs of 166 tiles (the demo's train split) once,
    in SimCLR steps (an SPPS step is its host's step: the pairs are ordinary batch items);
  * a minimal hand-written lightly SimCLR loop (timm encoder, lightly head and NT-Xent),

and the targets GraSS / SimCLR <= 1.5 (the guide pass needs dL/dA only) and geocl
SimCLR / minimal loop <= 1.1 (the framework adds little).

    .venv/bin/python benchmarks/pretrain_step.py [--batch 32] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader, Dataset

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.losses import NTXentLoss
from geocl.methods import build_method, load_recipe
from geocl.models import create_encoder, projection_head
from geocl.sampling import SemanticPairSampler
from geocl.transforms import MultiBandViewAugmentation, TwoViews

BANDS = 4
TILE = 128


class RandomTiles(Dataset[dict[str, torch.Tensor]]):
    """In-memory tiles, so data loading is not part of the measurement."""

    def __init__(self, count: int) -> None:
        self.images = torch.randn(count, BANDS, TILE, TILE, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[item]}


class StepTimer(lightning.Callback):
    """Wall time of every optimizer step (batch start to batch end)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


RECIPES = Path(__file__).resolve().parents[1] / "recipes"
#: CPU recipes measured, in print order (SPPS is its host's step plus one-off mining).
MEASURED = ("simclr", "grass", "moco", "multinet", "patchmix")


def recipe(folder: Path, name: str, args: argparse.Namespace, extra: Sequence[str] = ()) -> Any:
    """A shipped CPU recipe with the benchmark's batch, no workers and a constant LR."""
    overrides = [
        f"out={folder / name}",
        f"data.tiles={folder}",
        f"data.batch_size={args.batch}",
        "data.num_workers=0",
        "scheduler.name=none",
        *extra,
    ]
    if name == "grass":
        overrides.append("method.warmup_epochs=0")  # stage 2 from the first step
    return load_recipe(RECIPES / f"{name}.yaml", overrides)


def lightning_step_times(config: Any, args: argparse.Namespace) -> list[float]:
    model = build_method(config, BANDS, {"mean": [0.0] * BANDS, "std": [1.0] * BANDS})
    timer = StepTimer()
    trainer = lightning.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    loader = DataLoader(RandomTiles(args.batch * args.steps), batch_size=args.batch, drop_last=True)
    trainer.fit(model, loader)
    return timer.times


def lightly_loop_step_times(args: argparse.Namespace) -> list[float]:
    """The minimal loop: encoder, lightly head and loss, the same views, plain SGD."""
    torch.manual_seed(0)
    encoder = create_encoder("resnet18", BANDS)
    head = projection_head(encoder.num_features, 512, 128)
    criterion = NTXentLoss(temperature=0.5)
    views = TwoViews(MultiBandViewAugmentation(96))
    optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.01, momentum=0.9)
    images = RandomTiles(args.batch).images
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        view_a, view_b = views(images)
        loss = criterion(head(encoder(view_a)), head(encoder(view_b)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def spps_mining_seconds(config: Any, tiles: int = 166) -> float:
    """Seconds to mine SPPS pairs of ``tiles`` tiles with the recipe's encoder and settings."""
    model = build_method(config, BANDS, {"mean": [0.0] * BANDS, "std": [1.0] * BANDS})
    params = config.method.spps
    sampler = SemanticPairSampler(params, size=int(config.data.view_size))
    start = time.perf_counter()
    sampler(model.semantic_encoder, RandomTiles(tiles))
    return time.perf_counter() - start


def median_after_warmup(times: list[float], warmup: int = 2) -> float:
    return statistics.median(times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="images per step (2 views each)")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    lightning.seed_everything(0, verbose=False)
    medians: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in MEASURED:
            medians[name] = median_after_warmup(lightning_step_times(recipe(folder, name, args), args))
        vit = recipe(folder, "patchmix", args).encoder.model_dump()
        vit_overrides = [f"encoder.name={vit['name']}", f"encoder.args={json.dumps(vit['args'])}", "data.view_size=64"]
        medians["simclr-vit"] = median_after_warmup(
            lightning_step_times(recipe(folder, "simclr", args, vit_overrides), args)
        )
        mining = spps_mining_seconds(recipe(folder, "spps_simclr", args))
        minimal = median_after_warmup(lightly_loop_step_times(args))
    print(
        f"batch {args.batch} x 2 views, {BANDS} bands, {torch.get_num_threads()} threads, median of {args.steps - 2} steps:"
    )
    print(f"  {'method':<10} {'encoder':<32} {'ms/step':>8} {'/ SimCLR':>9}")
    for name in MEASURED:
        baseline = medians["simclr-vit"] if name == "patchmix" else medians["simclr"]
        encoder = "ViT-Tiny, patch 8, 64 px views" if name == "patchmix" else "ResNet-18, 96 px views"
        print(f"  {name:<10} {encoder:<32} {medians[name] * 1000:8.1f} {medians[name] / baseline:9.2f}")
    print(f"  {'simclr':<10} {'ViT-Tiny, patch 8, 64 px views':<32} {medians['simclr-vit'] * 1000:8.1f} {1.0:9.2f}")
    print(f"  SPPS: a step is its host's; mining 166 tiles once = {mining / medians['simclr']:.1f} SimCLR steps")
    print(f"  minimal lightly loop (ResNet-18)  {minimal * 1000:8.1f} ms/step")
    print(
        f"GraSS / SimCLR = {medians['grass'] / medians['simclr']:.2f} (target <= 1.5)   "
        f"geocl SimCLR / minimal loop = {medians['simclr'] / minimal:.2f} (target <= 1.1)"
    )


if __name__ == "__main__":
    main()
