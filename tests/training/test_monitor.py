"""The online representation monitor: its kNN probe against a numpy hand computation, that it
changes nothing, and on tiny real pretraining runs (rows, reference, plot, cost, resume)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import geocl.methods  # noqa: F401  (registers the methods' recipe sections)
from geocl.data.synthetic import make_scene
from geocl.data.tile_dataset import IGNORE_INDEX
from geocl.data.tiler import TilingOptions, tile_scene
from geocl.methods import load_recipe
from geocl.models import create_encoder
from geocl.training.monitor import (
    ProbeTiles,
    RepresentationMonitor,
    build_monitor,
    cell_features,
    cell_labels,
    probe,
    stage_features,
)
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe

# ------------------------------------------------------------------ the probe on toys


def _numpy_probe(bank_x, bank_m, query_x, query_m, classes, grid, k, temperature):  # type: ignore[no-untyped-def]
    """The probe written out with loops: cell means, per-cell majority, weighted cosine votes, IoU."""

    def cells(images):  # type: ignore[no-untyped-def]
        n, d, h, w = images.shape
        side = h // grid
        means = images.reshape(n, d, grid, side, grid, side).mean(axis=(3, 5))
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        return means.transpose(0, 2, 3, 1).reshape(-1, d)

    def majority(masks):  # type: ignore[no-untyped-def]
        side = masks.shape[1] // grid
        labels = []
        for mask in masks:
            for r in range(grid):
                for c in range(grid):
                    block = mask[r * side : (r + 1) * side, c * side : (c + 1) * side]
                    block = block[block != IGNORE_INDEX]
                    labels.append(np.bincount(block, minlength=classes).argmax() if block.size else IGNORE_INDEX)
        return np.array(labels)

    bank, labels = cells(bank_x), majority(bank_m)
    bank, labels = bank[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX]
    predicted = []
    for query in cells(query_x):
        similarity = bank @ query / (np.linalg.norm(bank, axis=1) * np.linalg.norm(query))
        votes = np.zeros(classes)
        for index in np.argsort(-similarity)[: min(k, len(bank))]:
            votes[labels[index]] += np.exp(similarity[index] / temperature)
        predicted.append(votes.argmax())
    side = query_m.shape[1] // grid
    pixels = np.stack(
        [np.kron(p, np.ones((side, side), dtype=int)) for p in np.array(predicted).reshape(-1, grid, grid)]
    )
    confusion = np.zeros((classes, classes))
    for truth, guess in zip(query_m.ravel(), pixels.ravel(), strict=True):
        if truth != IGNORE_INDEX:
            confusion[truth, guess] += 1
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    return (hits[union > 0] / union[union > 0]).mean(), hits.sum() / confusion.sum()


def _toy(seed: int, n: int, classes: int = 3, dim: int = 5, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixels lean towards their class's direction, with noise and unlabelled pixels."""
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, classes, (n, size, size))
    directions = rng.normal(size=(classes, dim))
    images = directions[masks].transpose(0, 3, 1, 2) + rng.normal(scale=1.5, size=(n, dim, size, size))
    masks[rng.random(masks.shape) < 0.1] = IGNORE_INDEX
    return images.astype(np.float32), masks


def test_probe_equals_a_numpy_hand_computation_on_a_toy() -> None:
    (bank_x, bank_m), (query_x, query_m) = _toy(0, 3), _toy(1, 2)
    tiles = ProbeTiles(*(torch.from_numpy(a) for a in (bank_x, bank_m, query_x, query_m)), num_classes=3)
    score = probe(nn.Identity(), tiles, grid=4, k=5, temperature=0.5)  # features = the pixels themselves
    miou, accuracy = _numpy_probe(bank_x, bank_m, query_x, query_m, 3, 4, 5, 0.5)
    assert 0 < score.miou < 1
    assert score.miou == pytest.approx(miou, abs=1e-12) and score.accuracy == pytest.approx(accuracy, abs=1e-12)


def test_probe_scores_separable_features_perfectly_and_labels_cells_by_majority() -> None:
    masks = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 1, 1]]]).repeat(2, 1, 1)
    images = torch.nn.functional.one_hot(masks, 3).movedim(-1, 1).float()  # a class is a direction
    tiles = ProbeTiles(images[:1], masks[:1], images[1:], masks[1:], num_classes=3)
    score = probe(nn.Identity(), tiles, grid=2, k=4, temperature=0.07)
    assert (score.miou, score.accuracy) == (1.0, 1.0)
    # majority of the labelled pixels; a tie goes to the lower class; no labelled pixel: ignored
    mask = torch.tensor([[[0, 1, 2, 2], [1, 1, 2, IGNORE_INDEX], [IGNORE_INDEX] * 4, [IGNORE_INDEX, 0, 1, 1]]])
    assert cell_labels(mask, 2, 3).tolist() == [[[1, 2], [0, 1]]]


@pytest.mark.parametrize("stages", [None, (3, 4, 5)])
def test_probe_leaves_every_weight_statistic_mode_gradient_and_the_random_stream_unchanged(
    stages: tuple[int, ...] | None,
) -> None:
    torch.manual_seed(0)
    encoder = create_encoder("test_resnet", 4).train()
    encoder.body.bn1.eval()  # a submodule a method keeps in eval mode stays so
    before = {name: value.clone() for name, value in encoder.state_dict().items()}
    modes = {name: module.training for name, module in encoder.named_modules()}
    images, masks = torch.randn(4, 4, 32, 32), torch.randint(0, 3, (4, 32, 32))
    rng = torch.get_rng_state()
    score = probe(
        encoder, ProbeTiles(images[:2], masks[:2], images[2:], masks[2:], num_classes=3), grid=8, stages=stages
    )
    assert 0 <= score.miou <= 1
    assert torch.equal(torch.get_rng_state(), rng)
    after = encoder.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # BatchNorm running stats included
    assert {name: module.training for name, module in encoder.named_modules()} == modes
    assert all(parameter.grad is None for parameter in encoder.parameters())


def test_stages_select_the_cnn_stages_by_number_and_the_probe_reads_only_those() -> None:
    torch.manual_seed(0)
    encoder = create_encoder("test_resnet", 4).eval()
    images, masks = torch.randn(4, 4, 64, 64), torch.randint(0, 3, (4, 64, 64))
    with torch.no_grad():
        every = stage_features(encoder, images)
        deep = stage_features(encoder, images, (5, 4))
    assert len(every) == 5 and [tuple(stage.shape[-2:]) for stage in deep] == [(4, 4), (2, 2)]  # strides 16, 32
    assert all(torch.equal(a, b) for a, b in zip(deep, every[3:], strict=True))

    class DeepOnly(nn.Module):  # the encoder seen through stages 4-5 alone: one map, the two concatenated cells
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return cell_features(stage_features(encoder, x, (4, 5)), 8)

    tiles = ProbeTiles(images[:2], masks[:2], images[2:], masks[2:], num_classes=3)
    assert probe(encoder, tiles, grid=8, stages=(4, 5)) == probe(DeepOnly(), tiles, grid=8)
    assert probe(encoder, tiles, grid=8, stages=None) != probe(encoder, tiles, grid=8, stages=(4, 5))
    with pytest.raises(ValueError, match="1..5"):
        stage_features(encoder, images, (0, 5))


def test_a_token_model_of_one_input_size_probes_windows_of_that_size() -> None:
    images, masks = torch.randn(2, 1, 2, 8, 8), torch.randint(0, 3, (2, 8, 8))
    tiles = ProbeTiles(images[0], masks[:1], images[1], masks[1:], num_classes=3).windows((4, 4))
    assert tiles.bank_images.shape == (4, 2, 4, 4) and tiles.query_masks.shape == (4, 4, 4)
    assert torch.equal(tiles.bank_images[1], images[0, 0, :, :4, 4:])  # row-major windows
    assert torch.equal(tiles.query_masks[2], masks[1, 4:, :4])


# --------------------------------------------------------------------------- when off


def test_off_quietly_for_other_data_and_with_one_info_line_without_masks_or_val_tiles(
    tmp_path: Path, tiny_tiles: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scene = make_scene(tmp_path / "scene", size=256, seed=0)
    options = TilingOptions(size=64, stride=64, max_nodata=0.3, split_block=128)
    tile_scene(scene.image, tmp_path / "unlabelled", options=options, progress=False)
    no_val = TilingOptions(size=64, stride=64, max_nodata=0.3, split_block=128, split_fractions=(1.0, 0.0, 0.0))
    tile_scene(scene.image, tmp_path / "train-only", mask=scene.mask, options=no_val, progress=False)

    def monitor(tiles: Path, **sections: dict) -> RepresentationMonitor | None:
        return build_monitor(load_recipe(write_recipe(tmp_path / "r", tiles, {"name": "simclr"}, **sections)))

    def said() -> list[tuple[int, str]]:  # geocl's records, and anything of warning level
        records = [r for r in caplog.records if r.name.startswith("geocl") or r.levelno >= logging.WARNING]
        caplog.clear()
        return [(record.levelno, record.getMessage()) for record in records]

    caplog.set_level(logging.DEBUG)
    caplog.clear()
    assert monitor(tiny_tiles, monitor={"every_n_steps": 0}) is None
    assert monitor(tiny_tiles, monitor={"every_n_steps": None}) is None
    assert monitor(tmp_path, data={"format": "image_folder", "path": str(tmp_path), "tiles": ""}) is None
    assert said() == []
    assert monitor(tmp_path / "unlabelled") is None
    [(level, message)] = said()
    assert level == logging.INFO and "has no masks" in message
    assert monitor(tmp_path / "train-only") is None
    [(level, message)] = said()
    assert level == logging.INFO and "0 labelled val tiles" in message
    assert isinstance(monitor(tiny_tiles), RepresentationMonitor)


def test_loss_plot_draws_the_probe_below_the_loss_with_the_random_init_as_a_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geocl.report.curves as curves

    for version, rows in enumerate(
        [
            "step,train/loss_step,monitor/miou\n0,2.0,\n0,,0.30\n1,1.8,\n2,1.7,0.35\n",
            "step,train/loss_step,monitor/miou\n2,1.6,\n3,1.5,\n4,,0.40\n",  # a resumed start
        ]
    ):
        (tmp_path / f"version_{version}").mkdir()
        (tmp_path / f"version_{version}" / "metrics.csv").write_text(rows)
    drawn = []
    monkeypatch.setattr(curves, "save_figure", lambda figure, out: drawn.append(figure) or Path(out))
    curves.plot_loss_curve(tmp_path, tmp_path / "loss.png")
    loss, probed = drawn[0].axes
    assert loss.get_ylabel() == "contrastive loss" and probed.get_ylabel() == "probe mIoU"
    curve, reference = probed.get_lines()
    assert curve.get_xdata().tolist() == [0, 2, 4] and curve.get_ydata().tolist() == [0.30, 0.35, 0.40]
    assert list(reference.get_ydata()) == [0.30, 0.30] and "random init" in reference.get_label()


# ------------------------------------------------------------------- tiny real runs


def _monitor_rows(run: Path, version: int | None = None) -> pd.DataFrame:
    logs = run / "logs"
    paths = (
        sorted(logs.glob("version_*/metrics.csv")) if version is None else [logs / f"version_{version}" / "metrics.csv"]
    )
    metrics = pd.concat([pd.read_csv(path) for path in paths])
    return metrics.dropna(subset=["monitor/miou"])


def test_tiny_pretraining_logs_the_probe_at_the_expected_steps_and_leaves_the_weights_bit_identical(
    tmp_path: Path, tiny_tiles: Path
) -> None:
    # 2 epochs x 3 batches = 6 steps, probed every 4: step 0 (random init), 4 (mid-epoch) and the last
    results = {}
    for every in (4, 0):
        path = write_recipe(tmp_path / str(every), tiny_tiles, {"name": "simclr"}, monitor={"every_n_steps": every})
        results[every] = run_pretrain(load_recipe(path))
    run = results[4].out
    rows = _monitor_rows(run)
    assert rows["step"].tolist() == [0, 4, 6]
    assert rows["monitor/miou"].between(0, 1).all() and rows["monitor/accuracy"].between(0, 1).all()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["monitor_init_miou"] == round(rows["monitor/miou"].iloc[0], 4)
    assert metrics["monitor_miou"] == round(rows["monitor/miou"].iloc[-1], 4) and metrics["monitor_step"] == 6
    assert 0 < metrics["monitor_seconds"] < metrics["seconds"]
    assert (run / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # off: no rows, no keys; on: the same weights and BatchNorm statistics, bit for bit
    off = results[0].out
    assert "monitor/miou" not in pd.read_csv(off / "logs" / "version_0" / "metrics.csv")
    assert "monitor_seconds" not in json.loads((off / "metrics.json").read_text())
    with_monitor, without = (torch.load(results[every].checkpoint, weights_only=True)["state_dict"] for every in (4, 0))
    assert with_monitor.keys() == without.keys()
    assert all(torch.equal(with_monitor[name], without[name]) for name in without)


def test_resume_keeps_the_reference_without_duplicate_rows_or_recomputes_it_from_the_initial_weights(
    tmp_path: Path, tiny_tiles: Path
) -> None:
    one_epoch = {"trainer": {"max_epochs": 1}}
    on = write_recipe(tmp_path / "on", tiny_tiles, {"name": "simclr"}, **one_epoch, monitor={"every_n_steps": 2})
    run_pretrain(load_recipe(on))
    run = tmp_path / "on" / "run"
    run_pretrain(load_recipe(on, ["trainer.max_epochs=2"]), resume=True)
    assert _monitor_rows(run, 0)["step"].tolist() == [0, 2, 3]
    assert _monitor_rows(run, 1)["step"].tolist() == [4, 6]  # step 0 neither relogged nor recomputed
    reference = _monitor_rows(run, 0)["monitor/miou"].iloc[0]
    assert json.loads((run / "metrics.json").read_text())["monitor_init_miou"] == round(reference, 4)

    # started with the monitor off, resumed with it on: the reference is the initial weights' value
    off = write_recipe(tmp_path / "off", tiny_tiles, {"name": "simclr"}, **one_epoch, monitor={"every_n_steps": 0})
    run_pretrain(load_recipe(off))
    run_pretrain(load_recipe(off, ["trainer.max_epochs=2", "monitor.every_n_steps=2"]), resume=True)
    rows = _monitor_rows(tmp_path / "off" / "run")
    assert rows["step"].tolist() == [0, 4, 6] and rows["monitor/miou"].iloc[0] == reference
