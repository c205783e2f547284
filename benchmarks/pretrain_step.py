"""Step-time ratios of pretraining methods, measured in one run with one encoder and batch.

Prints the median optimizer-step time (data already in memory, same kornia views) of

  * geocl SimCLR through Lightning's Trainer,
  * geocl GraSS in stage 2 (guide pass + crop + training pass) through the Trainer,
  * a minimal hand-written lightly SimCLR loop (timm encoder, lightly head and NT-Xent),

and the ratios GraSS / SimCLR (target <= 1.5: the guide pass needs dL/dA only) and
geocl SimCLR / minimal loop (target <= 1.1: the framework adds little).

    .venv/bin/python benchmarks/pretrain_step.py [--encoder resnet18] [--batch 32] [--size 96] [--steps 12]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

import geocl.methods  # noqa: F401  (registers the methods)
from geocl.losses import NTXentLoss
from geocl.methods import method_class
from geocl.models import create_encoder, projection_head
from geocl.recipes import load_recipe
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


def recipe(folder: Path, method: dict[str, Any], args: argparse.Namespace) -> Any:
    path = folder / f"{method['name']}.yaml"
    path.write_text(yaml.safe_dump({
        "name": method["name"], "out": str(folder / method["name"]), "seed": 0,
        "data": {"tiles": str(folder), "batch_size": args.batch, "num_workers": 0, "view_size": args.size},
        "encoder": {"name": args.encoder},
        "method": {"hidden_dim": 512, "output_dim": 128, **method},
        "optimizer": {"name": "sgd", "lr": 0.01},
        "scheduler": {"name": "none"},
    }))
    return load_recipe(path)


def lightning_step_times(config: Any, args: argparse.Namespace) -> list[float]:
    model = method_class(config.method.name)(config, BANDS, {"mean": [0.0] * BANDS, "std": [1.0] * BANDS})
    timer = StepTimer()
    trainer = lightning.Trainer(
        max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    loader = DataLoader(RandomTiles(args.batch * args.steps), batch_size=args.batch, drop_last=True)
    trainer.fit(model, loader)
    return timer.times


def lightly_loop_step_times(args: argparse.Namespace) -> list[float]:
    """The minimal loop: encoder, lightly head and loss, the same views, plain SGD."""
    torch.manual_seed(0)
    encoder = create_encoder(args.encoder, BANDS)
    head = projection_head(encoder.num_features, 512, 128)
    criterion = NTXentLoss(temperature=0.5)
    views = TwoViews(MultiBandViewAugmentation(args.size))
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


def median_after_warmup(times: list[float], warmup: int = 2) -> float:
    return statistics.median(times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--batch", type=int, default=32, help="images per step (2 views each)")
    parser.add_argument("--size", type=int, default=96, help="view side (px)")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    lightning.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        simclr = median_after_warmup(lightning_step_times(recipe(folder, {"name": "simclr"}, args), args))
        grass = median_after_warmup(lightning_step_times(recipe(folder, {"name": "grass", "warmup_epochs": 0}, args), args))
        minimal = median_after_warmup(lightly_loop_step_times(args))
    print(f"{args.encoder}, batch {args.batch} x 2 views of {args.size} px, {BANDS} bands, {torch.get_num_threads()} threads, "
          f"median of {args.steps - 2} steps:")
    print(f"  geocl SimCLR (Lightning)   {simclr * 1000:8.1f} ms/step")
    print(f"  geocl GraSS stage 2        {grass * 1000:8.1f} ms/step")
    print(f"  minimal lightly loop       {minimal * 1000:8.1f} ms/step")
    print(f"GraSS / SimCLR = {grass / simclr:.2f} (target <= 1.5)   "
          f"geocl SimCLR / minimal loop = {simclr / minimal:.2f} (target <= 1.1)")


if __name__ == "__main__":
    main()
