"""See learning happen during pretraining: a kNN segmentation probe of the frozen encoder.

The online evaluation of solo-learn (an online linear probe) and lightly's kNN
callback, for dense tile sets: every ``monitor.every_n_steps`` optimizer steps, at step
0 (before any training: the random-init encoder, the reference line) and at the last
step, the encoder, frozen, embeds a fixed subset of the tile set's labelled val tiles
and a weighted cosine kNN (InstDisc, Wu et al. 2018, arXiv:1805.01978; the vote of
DINO's kNN, arXiv:2104.14294) segments them:

1. every stage's feature map (timm ``forward_intermediates``: the 5 stages of a
   ResNet, or those numbered ``stages``, 1 = stem to 5 = deepest, as the frozen
   protocol's :class:`~geocl.finetune.linear_probe.DenseLinearProbe` numbers them; 4
   evenly spaced blocks of a ViT) is pooled (or, coarser than the grid, bilinearly
   upsampled) to ``grid x grid`` cells a tile, L2-normalised per stage and
   concatenated, so each stage weighs the same in the cosine similarity. Every stage
   by default, as the frozen protocol: on a 0.2 m urban tile set (a 60-step SimCLR
   checkpoint against random init, 6 draws of 4 + 4 labelled tiles, paired) every stage
   put SimCLR +2.1 points [+0.1, +4.6] above random init, stages 4-5 +2.5 [+1.1, +4.3]
   (all 6 draws) but every value 4-6 points lower;
2. each cell of the *bank* half of the tiles is labelled with the majority class of its
   labelled pixels (cells without any are left out);
3. each cell of the *query* half gets the class of its ``k`` most similar bank cells,
   each voting ``exp(similarity / T)`` (lightly's
   :func:`~lightly.utils.benchmarking.knn_predict`, the vote ``geocl evaluate`` uses);
4. the cell classes are spread over their pixels (nearest) and scored against the query
   tiles' masks: mIoU over the classes present (MMSeg convention, as
   :mod:`geocl.finetune.metrics`), and pixel accuracy.

Why kNN and not a trained (dense linear) probe: it trains nothing, so it has no learning
rate or epochs to tune, draws no random numbers and gives the same number for the same
features; it costs one forward pass of a few tiles plus one ``[cells x cells]``
similarity product. Its number is not the frozen linear probe's (nor a test score:
it reads val tiles): read the curve's trend and its distance to the random-init line,
and take the score from the frozen protocol of ``geocl compare``.

The probe is side-effect free: the encoder runs in eval mode under ``torch.no_grad``
(BatchNorm statistics untouched; every submodule's own mode is restored afterwards),
outside the DDP wrapper, on tensors read once at the start, and under
:func:`torch.random.fork_rng`, so a run with the monitor gives bit-identical weights to
the same run without it (tested). Values go to the run's loggers
(``logs/version_*/metrics.csv``: ``monitor/miou``, ``monitor/accuracy`` at the step
they describe, the number of optimizer steps done), to ``plots/loss.png`` and to the
training bar (``probe=0.41 (init 0.38)``); ``metrics.json`` gets ``monitor_seconds``
(this invocation's monitor time) beside ``seconds``, and the last and random-init mIoU.

Cost: one probe is one no-grad forward of ``monitor.tiles`` tiles plus one
``[cells x cells]`` similarity product (4 x 256 cells a side with the defaults). Measured
on 2 shared CPU cores (so +-30 %) with ``recipes/simclr.yaml`` (ResNet-18, 256 px tiles of
``geocl make-scene``): a probe of the default 8 tiles takes 1-2 s (0.9 s of it the
forward pass; the run's first one about 1 s more, the kernels' warm-up, plus 0.3 s to read
the tiles), a training step (32 x 2 views of 96 px, forward and backward) 4-6 s. With
the defaults (every 10 steps) the monitor took 9.7 s of the recipe's 6 epochs (30 steps,
196 s: 5 %) and 4.3 s of a 1-epoch run (5 steps, 46 s: 9 %; the probes at step 0 and at
the last step are a fixed cost, so the share grows as a run shrinks); not measured on a
GPU. ``metrics.json`` records each run's own ``monitor_seconds``
beside ``seconds``; ``monitor.every_n_steps: 0`` turns the monitor off.

Resume: the reference and the last probed step are kept in the checkpoint (the
callback's state), so a resumed run neither recomputes nor relogs step 0; a run resumed
with the monitor newly on or with other probe settings recomputes the reference from
the encoder's initial weights (see :meth:`RepresentationMonitor.remember_initial`).
DDP: rank 0 alone probes (the other ranks wait at the next gradient all-reduce);
nothing is communicated, so no collective can hang on an uneven probe.

Tile sets only: off without a word for natural images and medical volumes, off with
one INFO line for a tile set without masks or with fewer than 2 labelled val tiles.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import lightning
import numpy as np
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict
from torch import Tensor, nn
from torchmetrics.functional.classification import multiclass_confusion_matrix

from geocl.data.tile_dataset import IGNORE_INDEX, TileDataset

log = logging.getLogger(__name__)

#: Seed of the val-tile subset: the same tiles for every recipe, whatever its seed.
SUBSET_SEED = 0
#: Tiles embedded at once.
PROBE_BATCH = 16
#: Query cells scored at once: the similarity block is ``chunk x bank cells`` floats.
QUERY_CHUNK = 1024
#: Stages of a deep (token) model read at evenly spaced depths, as DPT does.
DEEP_STAGES = 4
#: CNN stages the probe reads by default (1 = stem ... 5 = deepest; see :func:`stage_features`).
DEFAULT_STAGES: tuple[int, ...] | None = None
#: Logged keys.
MIOU_KEY, ACCURACY_KEY = "monitor/miou", "monitor/accuracy"


@dataclass(frozen=True)
class ProbeScore:
    """What one probe measured: mIoU and pixel accuracy of the query tiles."""

    miou: float
    accuracy: float


@dataclass(frozen=True)
class ProbeTiles:
    """The fixed labelled tiles a probe reads: a bank half (votes) and a query half (scored).

    Attributes:
        bank_images: ``[Nb, C, H, W]`` float, normalised as the training images.
        bank_masks: ``[Nb, H, W]`` long class indices, :data:`IGNORE_INDEX` unlabelled.
        query_images: ``[Nq, C, H, W]``.
        query_masks: ``[Nq, H, W]``.
        num_classes: classes of the tile set.
        rows: the tiles' rows in the tile index (bank first): what the reference was computed on.
    """

    bank_images: Tensor
    bank_masks: Tensor
    query_images: Tensor
    query_masks: Tensor
    num_classes: int
    rows: tuple[int, ...] = ()

    @classmethod
    def from_tile_set(cls, root: str | Path, count: int) -> ProbeTiles | None:
        """Up to ``count`` labelled val tiles of a tile set, drawn with :data:`SUBSET_SEED`; None (and one
        INFO line) when it has no masks or fewer than 2 val tiles with a labelled pixel."""
        val = TileDataset(root, "val", progress=False)
        if not val.with_mask:
            log.info("representation monitor off: the tile set %s has no masks", root)
            return None
        samples = []
        for item in np.random.default_rng(SUBSET_SEED).permutation(len(val)):
            sample = val[int(item)]
            if bool((sample["mask"] != IGNORE_INDEX).any()):
                samples.append(sample)
                if len(samples) == count:
                    break
        if len(samples) < 2:
            log.info(
                "representation monitor off: the tile set %s has %d labelled val tiles (needs 2)", root, len(samples)
            )
            return None
        images = torch.stack([sample["image"] for sample in samples])
        masks = torch.stack([sample["mask"] for sample in samples]).long()
        half = (len(samples) + 1) // 2
        return cls(
            images[:half],
            masks[:half],
            images[half:],
            masks[half:],
            len(val.classes),
            tuple(int(sample["index"]) for sample in samples),
        )

    def windows(self, size: tuple[int, int]) -> ProbeTiles:
        """The tiles cut into non-overlapping ``size`` windows (an encoder that takes only that size)."""
        return replace(
            self,
            bank_images=_windows(self.bank_images, size),
            bank_masks=_windows(self.bank_masks, size),
            query_images=_windows(self.query_images, size),
            query_masks=_windows(self.query_masks, size),
        )


def _windows(tensor: Tensor, size: tuple[int, int]) -> Tensor:
    """``[N, (C,) H, W]`` -> ``[N * rows * cols, (C,) h, w]``: non-overlapping windows, row-major, remainder dropped."""
    h, w = size
    rows, cols = tensor.shape[-2] // h, tensor.shape[-1] // w
    squeeze = tensor.ndim == 3
    if squeeze:
        tensor = tensor[:, None]
    n, c = tensor.shape[:2]
    tensor = tensor[..., : rows * h, : cols * w].reshape(n, c, rows, h, cols, w).permute(0, 2, 4, 1, 3, 5)
    tensor = tensor.reshape(n * rows * cols, c, h, w)
    return tensor[:, 0] if squeeze else tensor


# ------------------------------------------------------------------ the probe, in parts


def stage_features(encoder: nn.Module, images: Tensor, stages: Sequence[int] | None = None) -> list[Tensor]:
    """Feature maps ``[B, D_s, h_s, w_s]`` of an encoder's stages.

    A timm body (an :class:`~geocl.models.Encoder`'s ``body``) gives its intermediates:
    the CNN stages numbered ``stages`` (1 = stem, output stride 2, to 5 = the deepest,
    stride 32, as :class:`~geocl.finetune.linear_probe.DenseLinearProbe` numbers them;
    None: every stage), or :data:`DEEP_STAGES` evenly spaced blocks of a deeper (token)
    model, whose blocks all share the patch stride (``stages`` does not apply). Other
    encoders: ``feature_map(images)`` if they have one, else their output.

    Raises:
        ValueError: ``stages`` names a stage the CNN does not have.
    """
    body: Any = getattr(encoder, "body", encoder)
    if hasattr(body, "forward_intermediates") and hasattr(body, "feature_info"):
        count = len(body.feature_info)
        evenly = [round((i + 1) * count / DEEP_STAGES) - 1 for i in range(DEEP_STAGES)]
        if count > 5:
            indices = evenly
        elif stages is None:
            indices = list(range(count))
        else:
            indices = sorted({int(stage) - 1 for stage in stages})
            if not indices or indices[0] < 0 or indices[-1] >= count:
                raise ValueError(f"stages must lie in 1..{count}, got {list(stages)}")
        return list(body.forward_intermediates(images, indices=indices, intermediates_only=True))
    feature_map = getattr(encoder, "feature_map", None)
    if callable(feature_map):
        return [feature_map(images)]
    return [encoder(images)]


def cell_features(stages: list[Tensor], grid: int) -> Tensor:
    """Stage maps -> ``[B, sum D_s, grid, grid]``: each pooled (finer maps) or bilinearly upsampled
    (coarser maps) to the grid, L2-normalised over its channels, concatenated."""
    cells = []
    for stage in stages:
        stage = stage.float()
        if min(stage.shape[-2:]) >= grid:
            pooled = F.adaptive_avg_pool2d(stage, grid)
        else:
            pooled = F.interpolate(stage, size=(grid, grid), mode="bilinear", align_corners=False)
        cells.append(F.normalize(pooled, dim=1))
    return torch.cat(cells, dim=1)


def cell_labels(masks: Tensor, grid: int, num_classes: int) -> Tensor:
    """Masks ``[B, H, W]`` -> ``[B, grid, grid]``: the majority class of each cell's labelled pixels
    (the lowest class on a tie), :data:`IGNORE_INDEX` where a cell has none."""
    labelled = masks != IGNORE_INDEX
    one_hot = F.one_hot(masks.clamp(0, num_classes - 1), num_classes).movedim(-1, 1).float() * labelled[:, None]
    shares = F.adaptive_avg_pool2d(one_hot, grid)
    labels = shares.argmax(dim=1)
    labels[shares.sum(dim=1) == 0] = IGNORE_INDEX
    return labels


def knn_cells(
    bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int, k: int, temperature: float
) -> Tensor:
    """Weighted cosine kNN class of every query cell.

    Args:
        bank: ``[Nb, D, g, g]`` cell features; bank_labels: ``[Nb, g, g]`` (:data:`IGNORE_INDEX` cells left out).
        queries: ``[Nq, D, g, g]``.
        num_classes, k, temperature: as :func:`~lightly.utils.benchmarking.knn_predict`
            (``k`` capped at the labelled bank cells).

    Returns:
        ``[Nq, g, g]`` long classes.
    """
    dim = bank.shape[1]
    labels = bank_labels.reshape(-1)
    keep = labels != IGNORE_INDEX
    vectors = F.normalize(bank.movedim(1, -1).reshape(-1, dim)[keep], dim=1).t().contiguous()
    labels = labels[keep]
    flat = queries.movedim(1, -1).reshape(-1, dim)
    k = min(k, len(labels))
    predicted = [
        knn_predict(F.normalize(chunk, dim=1), vectors, labels, num_classes, knn_k=k, knn_t=temperature)[:, 0]
        for chunk in flat.split(QUERY_CHUNK)
    ]
    return torch.cat(predicted).reshape(queries.shape[0], *queries.shape[2:])


def segmentation_score(predicted: Tensor, masks: Tensor, num_classes: int) -> ProbeScore:
    """mIoU (over the classes in the masks or the prediction) and pixel accuracy over the labelled pixels."""
    confusion = multiclass_confusion_matrix(
        predicted.reshape(-1), masks.reshape(-1), num_classes, ignore_index=IGNORE_INDEX
    ).double()
    hits = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - hits
    iou = hits[union > 0] / union[union > 0]
    total = confusion.sum()
    return ProbeScore(
        miou=float(iou.mean()) if len(iou) else math.nan, accuracy=float(hits.sum() / total) if total > 0 else math.nan
    )


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd inside; every submodule's own mode restored on leaving."""
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for child, training in modes:
            child.training = training


def probe(
    encoder: nn.Module,
    tiles: ProbeTiles,
    *,
    grid: int = 16,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = PROBE_BATCH,
    stages: Sequence[int] | None = DEFAULT_STAGES,
) -> ProbeScore:
    """Segment the query tiles by kNN over the bank tiles' cells; score them (the module docstring's steps).

    The encoder runs frozen (:func:`frozen`) on its own device and dtype; nothing in it changes.
    ``stages``: the CNN stages read (:func:`stage_features`; None: every stage).
    """
    parameter = next(encoder.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    grid = min(grid, *tiles.bank_images.shape[-2:])

    def embed(images: Tensor) -> Tensor:
        return torch.cat(
            [
                cell_features(stage_features(encoder, batch.to(device, dtype), stages), grid)
                for batch in images.split(batch_size)
            ]
        )

    with frozen(encoder):
        bank, queries = embed(tiles.bank_images), embed(tiles.query_images)
        bank_labels = cell_labels(tiles.bank_masks.to(device), grid, tiles.num_classes)
        if not bool((bank_labels != IGNORE_INDEX).any()):
            return ProbeScore(math.nan, math.nan)
        classes = knn_cells(bank, bank_labels, queries, tiles.num_classes, k, temperature)
        size = tiles.query_masks.shape[-2:]
        pixels = F.interpolate(classes[:, None].float(), size=size, mode="nearest")[:, 0].long()
        return segmentation_score(pixels, tiles.query_masks.to(device), tiles.num_classes)


def _fixed_input_size(encoder: nn.Module) -> tuple[int, int] | None:
    """The only input size a token model takes (timm's strict ``img_size``), None when any size goes."""
    embed = getattr(getattr(encoder, "body", encoder), "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if embed is None or size is None or not getattr(embed, "strict_img_size", False):
        return None
    return int(size[0]), int(size[1])


# ------------------------------------------------------------------------ the callback


class RepresentationMonitor(lightning.Callback):
    """Probe the frozen ``module.encoder`` at step 0, every ``every_n_steps`` optimizer steps and at the last.

    See the module docstring for what is measured and why it changes nothing.

    Args:
        tiles: the fixed probe tiles.
        every_n_steps: interval in optimizer steps (>= 1).
        grid, k, temperature, stages: the probe's (:func:`probe`).

    Attributes:
        reference: mIoU of the random-init encoder (the step-0 value), None until known.
        miou, accuracy, step: the last probe's values and the optimizer step it describes.
        seconds: time this process spent on the monitor in this invocation (reading the tiles
            in :func:`build_monitor`, and every probe, the reference included).
    """

    def __init__(
        self,
        tiles: ProbeTiles,
        every_n_steps: int,
        *,
        grid: int = 16,
        k: int = 20,
        temperature: float = 0.07,
        stages: Sequence[int] | None = DEFAULT_STAGES,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.tiles = tiles
        self.every_n_steps = every_n_steps
        self.grid, self.k, self.temperature = grid, k, temperature
        self.stages = None if stages is None else tuple(sorted({int(stage) for stage in stages}))
        self.reference: float | None = None
        self.miou: float | None = None
        self.accuracy: float | None = None
        self.step: int | None = None
        self.seconds = 0.0
        self._reference_settings: dict[str, Any] | None = None
        self._initial: dict[str, Tensor] | None = None
        self._last_step: float = math.inf

    @property
    def settings(self) -> dict[str, Any]:
        """What a reference depends on besides the initial weights: the tiles and the probe."""
        return {
            "rows": list(self.tiles.rows),
            "grid": self.grid,
            "k": self.k,
            "temperature": self.temperature,
            "stages": None if self.stages is None else list(self.stages),
        }

    def remember_initial(self, encoder: nn.Module) -> None:
        """Keep a CPU copy of the encoder's initial weights, to compute the reference from in a resumed
        run whose checkpoint holds none (the monitor was off, or probed with other settings).
        Call it before the checkpoint is loaded; the copy is dropped when training starts."""
        self._initial = {name: value.detach().to("cpu", copy=True) for name, value in encoder.state_dict().items()}

    def _probe(self, encoder: nn.Module) -> ProbeScore:
        start = time.perf_counter()
        parameter = next(encoder.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        cuda = device.type == "cuda"
        devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
        with torch.random.fork_rng(devices=devices):
            score = probe(
                encoder, self.tiles, grid=self.grid, k=self.k, temperature=self.temperature, stages=self.stages
            )
        self.seconds += time.perf_counter() - start
        return score

    def _log(self, trainer: lightning.Trainer, score: ProbeScore, step: int) -> None:
        metrics = {MIOU_KEY: score.miou, ACCURACY_KEY: score.accuracy, "epoch": trainer.current_epoch}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def _record(self, trainer: lightning.Trainer, score: ProbeScore, step: int) -> None:
        self.miou, self.accuracy, self.step = score.miou, score.accuracy, step
        self._log(trainer, score, step)

    def on_train_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        initial, self._initial = self._initial, None
        encoder = getattr(pl_module, "encoder", None)
        if not trainer.is_global_zero or not isinstance(encoder, nn.Module):
            self.every_n_steps = 0  # a method without the encoder attribute of the contract: nothing to probe
            return
        size = _fixed_input_size(encoder)
        if size is not None and tuple(self.tiles.bank_images.shape[-2:]) != size:
            if min(self.tiles.bank_images.shape[-2:]) < min(size):
                log.info(
                    "representation monitor off: the encoder takes only %dx%d px inputs, the tiles are smaller", *size
                )
                self.every_n_steps = 0
                return
            self.tiles = self.tiles.windows(size)
        total = trainer.estimated_stepping_batches
        self._last_step = float(total) if math.isfinite(total) else math.inf
        if self.reference is not None and self._reference_settings == self.settings:
            return
        if trainer.global_step == 0:
            score = self._probe(encoder)
            self._record(trainer, score, 0)
        elif initial is not None:
            start = copy.deepcopy(encoder)
            start.load_state_dict(initial)
            score = self._probe(start)
            del start
            self._log(trainer, score, 0)
        else:
            return
        self.reference, self._reference_settings = score.miou, self.settings

    def on_train_batch_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or not self.every_n_steps or step == self.step:
            return
        if step % self.every_n_steps == 0 or step == self._last_step:
            self._record(trainer, self._probe(cast(nn.Module, pl_module.encoder)), step)

    def progress_fields(self) -> dict[str, str]:
        """What the training bar shows: ``{"probe": "0.41 (init 0.38)"}``, {} before the first probe."""
        if self.miou is None:
            return {}
        init = f" (init {self.reference:.2f})" if self.reference is not None else ""
        return {"probe": f"{self.miou:.2f}{init}"}

    def summary(self) -> dict[str, Any]:
        """What ``metrics.json`` records of the monitor."""
        return {
            "monitor_seconds": round(self.seconds, 2),
            "monitor_init_miou": _finite_or_none(self.reference),
            "monitor_miou": _finite_or_none(self.miou),
            "monitor_step": self.step,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "settings": self._reference_settings,
            "miou": self.miou,
            "accuracy": self.accuracy,
            "step": self.step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        def number(key: str) -> float | None:
            value = state_dict.get(key)
            return float(value) if isinstance(value, (int, float)) else None

        self.reference, self.miou, self.accuracy = number("reference"), number("miou"), number("accuracy")
        step = state_dict.get("step")
        self.step = step if isinstance(step, int) else None
        settings = state_dict.get("settings")
        self._reference_settings = settings if isinstance(settings, dict) else None


def _finite_or_none(value: float | None) -> float | None:
    return round(value, 4) if value is not None and math.isfinite(value) else None


def build_monitor(recipe: Any) -> RepresentationMonitor | None:
    """The monitor a recipe's ``monitor`` section asks for, or None: off (``every_n_steps`` 0 or
    null), data that are not a tile set (silently), or a tile set without labelled val tiles
    (one INFO line)."""
    config = recipe.monitor
    if not config.every_n_steps or recipe.data.format != "tiles":
        return None
    start = time.perf_counter()
    tiles = ProbeTiles.from_tile_set(recipe.data.tiles, config.tiles)
    if tiles is None:
        return None
    monitor = RepresentationMonitor(
        tiles, config.every_n_steps, grid=config.grid, k=config.k, temperature=config.temperature
    )
    monitor.seconds = time.perf_counter() - start  # reading the tiles is part of its cost
    return monitor
