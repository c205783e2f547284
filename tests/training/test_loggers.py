"""Experiment loggers: TensorBoard events and MLflow runs (file store) after a short pretraining and
a two-row compare, read back with TensorBoard's EventAccumulator and MLflow's client; the CSV log
is written beside them every time."""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import geocl.methods  # noqa: F401  (registers the methods' recipe sections)
from geocl.console import configure_output
from geocl.errors import GeoclError
from geocl.experiments import CompareOptions, run_compare
from geocl.methods import load_recipe
from geocl.training.loggers import INSTALL_HINT, flat_keys, shown_uri, tracking_uri
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe

# the optional extra geocl[loggers]; their own readers check what geocl wrote
EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")
MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient

SIMCLR = {"name": "simclr", "hidden_dim": 32, "output_dim": 16}
#: A finetuning of each compare row: one epoch of five steps (the loss is logged every five), validated once.
FINETUNE = {
    "max_epochs": 1,
    "steps_per_epoch": 5,
    "val_every": 1,
    "batch_size": 4,
    "crop": 32,
    "accelerator": "cpu",
    "progress": False,
}


@pytest.fixture
def no_mlflow_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking URI, experiment or file-store setting from the environment of the test run."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[list[warnings.WarningMessage]]:
    """geocl's quiet output (as the CLI without --verbose); yields the warnings that got through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_output(verbose=False)
        try:
            with caplog.at_level(logging.WARNING):
                yield caught
        finally:
            configure_output(verbose=True)


def _pretraining(tmp_path: Path, tiles: Path, logger: str) -> Path:
    path = write_recipe(tmp_path, tiles, SIMCLR, trainer={"max_epochs": -1, "max_steps": 3, "logger": logger})
    run_pretrain(load_recipe(path), progress=False)
    return tmp_path / "run"


def _csv_steps(run: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of a metric in the run's CSV log: what the other logger must hold too."""
    frame = pd.read_csv(run / "logs" / "version_0" / "metrics.csv").dropna(subset=[metric])
    return [(int(step), float(value)) for step, value in zip(frame["step"], frame[metric], strict=True)]


def _assert_same_series(logged: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    """The same steps, and the same values up to float32 rounding (TensorBoard stores float32)."""
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=1e-6)


def _events(folder: Path) -> EventAccumulator:
    assert list(folder.glob("events.out.tfevents.*")), f"no TensorBoard event file in {folder}"
    return EventAccumulator(str(folder)).Reload()


def _hparams(events: EventAccumulator) -> dict[str, Any]:
    """The session's hyperparameters as TensorBoard's HPARAMS tab reads them."""
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {
        name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind")) for name, value in hparams.items()
    }


def _client(uri: str, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens file stores only with it
    return MlflowClient(uri)


def _history(client: MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    return [(entry.step, entry.value) for entry in client.get_metric_history(run_id, metric)]


def test_pretraining_writes_tensorboard_events_with_the_csv_values_and_the_recipe_as_hparams(
    tmp_path: Path, tiny_tiles: Path, quiet: list[warnings.WarningMessage], caplog: pytest.LogCaptureFixture
) -> None:
    run = _pretraining(tmp_path, tiny_tiles, "tensorboard")

    events = _events(run / "tensorboard" / "version_0")
    logged = [(event.step, event.value) for event in events.Scalars("train/loss_step")]
    expected = _csv_steps(run, "train/loss_step")  # the CSV log is still written, first
    _assert_same_series(logged, expected)
    assert [step for step, _ in logged] == [0, 1, 2]
    assert "train/loss_epoch" in events.Tags()["scalars"]
    hparams = _hparams(events)
    assert hparams["recipe.method.name"] == "simclr" and hparams["recipe.trainer.max_steps"] == 3
    assert hparams["recipe.trainer.logger"] == "tensorboard" and hparams["recipe.data.batch_size"] == 8
    assert hparams["geocl.run"] == "pretrain" and hparams["recipe"] == "simclr" and hparams["method"] == "simclr"
    assert not (run / "mlruns").exists()
    noisy = [str(w.message) for w in quiet if "tensorboard" in w.filename or "lightning" in w.filename]
    assert not noisy and not [r for r in caplog.records if not r.name.startswith("geocl")]


def test_pretraining_logs_an_mlflow_run_in_a_file_store_inside_the_run_folder(
    tmp_path: Path,
    tiny_tiles: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_mlflow_settings: None,
    quiet: list[warnings.WarningMessage],
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = _pretraining(tmp_path, tiny_tiles, "mlflow")
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # set while the store opened, then put back

    client = _client((run / "mlruns").as_uri(), monkeypatch)
    experiment = client.get_experiment_by_name("geocl")
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    tags, params = found.data.tags, found.data.params
    assert (tags["geocl.run"], tags["recipe"], tags["method"]) == ("pretrain", "simclr", "simclr")
    assert params["recipe.trainer.max_steps"] == "3" and params["recipe.trainer.logger"] == "mlflow"
    assert params["recipe.method.hidden_dim"] == "32" and params["recipe.data.tiles"] == str(tiny_tiles)
    expected = _csv_steps(run, "train/loss_step")
    logged = _history(client, found.info.run_id, "train/loss_step")
    _assert_same_series(logged, expected)
    assert [step for step, _ in logged] == [0, 1, 2]
    assert not (run / "tensorboard").exists()
    noisy = [str(w.message) for w in quiet if any(name in w.filename for name in ("mlflow", "lightning"))]
    assert not noisy and not [r for r in caplog.records if not r.name.startswith("geocl")]


def test_a_missing_logger_package_is_one_line_before_any_file_is_written(
    tmp_path: Path, tiny_tiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importlib finds no spec
    path = write_recipe(tmp_path, tiny_tiles, SIMCLR, trainer={"logger": "mlflow"})
    with pytest.raises(GeoclError) as error:
        run_pretrain(load_recipe(path), progress=False)
    assert str(error.value) == f"trainer.logger: mlflow needs the mlflow package: {INSTALL_HINT}"
    assert not (tmp_path / "run").exists()


def test_tracking_uri_and_flat_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_mlflow_settings: None) -> None:
    assert tracking_uri(tmp_path) == (tmp_path.resolve() / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@tracking.example:5000")
    assert tracking_uri(tmp_path) == "http://user:secret@tracking.example:5000"
    assert shown_uri(tracking_uri(tmp_path)) == "http://tracking.example:5000"  # no credentials in messages
    assert flat_keys({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": {},
        "f": None,
    }


def _summary_metrics(out: Path) -> dict[str, float]:
    """``<evaluation>/<recipe>/f<fraction>/<column>`` of every finite figure of results_summary.csv."""
    figures = {}
    for row in pd.read_csv(out / "results_summary.csv").to_dict("records"):
        for column in ("mean", "low", "high", "n", "delta", "delta_low", "delta_high", "pairs", "wins", "losses"):
            if isinstance(row[column], float | int) and math.isfinite(row[column]):
                figures[f"{row['evaluation']}/{row['recipe']}/f{row['label_fraction']:g}/{column}"] = float(row[column])
    return figures


def test_a_two_row_compare_logs_its_runs_and_its_paired_summary_to_mlflow(
    tmp_path: Path, tiny_tiles: Path, monkeypatch: pytest.MonkeyPatch, no_mlflow_settings: None
) -> None:
    recipe = write_recipe(tmp_path, tiny_tiles, SIMCLR, trainer={"max_epochs": -1, "max_steps": 2, "logger": "mlflow"})
    out = tmp_path / "cmp"
    options = CompareOptions(recipes=[recipe], label_fractions=[0.5], seeds=1, out=out, finetune=FINETUNE)
    results = run_compare(options, echo=None)
    assert list(results["recipe"]) == ["simclr", "random-init"] and set(results["status"]) == {"ok"}

    client = _client((out / "mlruns").as_uri(), monkeypatch)
    experiment = client.get_experiment_by_name("cmp")  # the comparison folder's name
    assert experiment is not None
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"recipe", "simclr-f0.5-s0", "random-init-f0.5-s0", "summary"}
    assert runs["recipe"].data.tags["geocl.run"] == "pretrain" and runs["recipe"].data.tags["comparison"] == "cmp"
    for name, row in zip(["simclr-f0.5-s0", "random-init-f0.5-s0"], results.to_dict("records"), strict=True):
        found = runs[name]
        tags, params = found.data.tags, found.data.params
        assert (tags["recipe"], tags["label_fraction"], tags["subset_seed"], tags["seed"]) == (
            row["recipe"],
            "0.5",
            "0",
            "0",
        )
        assert (tags["evaluation"], tags["comparison"], tags["geocl.run"]) == ("finetune", "cmp", "finetune")
        assert params["finetune.label_fraction"] == "0.5" and params["finetune.steps_per_epoch"] == "5"
        assert found.data.metrics["miou"] == pytest.approx(row["miou"], abs=1e-9)  # as results.csv
        assert found.data.metrics["test/miou"] == pytest.approx(row["miou"], abs=1e-9)
        assert "val/miou" in found.data.metrics
        folder = out / "finetune" / name
        expected_loss = _csv_steps(folder, "train/loss")  # logged every 5 steps: step 4
        _assert_same_series(_history(client, found.info.run_id, "train/loss"), expected_loss)
        assert [step for step, _ in expected_loss] == [4]
        assert (out / "finetune" / name / "logs" / "version_0" / "metrics.csv").is_file()  # CSV beside it
    # what the row's encoder is: the pretraining recipe, or the random init's data and encoder
    assert runs["simclr-f0.5-s0"].data.params["recipe.method.name"] == "simclr"
    assert runs["random-init-f0.5-s0"].data.params["random_init.encoder.name"] == "test_resnet"

    summary = runs["summary"]
    expected = _summary_metrics(out)
    assert "finetune/random-init/f0.5/delta" in expected and "finetune/simclr/f0.5/mean" in expected
    assert summary.data.metrics == pytest.approx(expected, abs=1e-9)
    assert summary.data.tags["baseline"] == "simclr" and summary.data.tags["geocl.run"] == "compare-summary"
    assert "results.md" in {artifact.path for artifact in client.list_artifacts(summary.info.run_id)}
    assert (out / "pretrain" / "recipe" / "logs" / "version_0" / "metrics.csv").is_file()


def test_a_two_row_compare_writes_tensorboard_events_for_each_row(tmp_path: Path, tiny_tiles: Path) -> None:
    """Budget 0: the two random-init rows alone (seeds 0 and 1), no pretraining."""
    recipe = write_recipe(tmp_path, tiny_tiles, SIMCLR, trainer={"logger": "tensorboard"})
    out = tmp_path / "cmp"
    options = CompareOptions(
        recipes=[recipe], label_fractions=[0.5], seeds=2, pretrain_steps=[0], out=out, finetune=FINETUNE
    )
    results = run_compare(options, echo=None)
    assert list(results["seed"]) == [0, 1] and set(results["status"]) == {"ok"}

    for seed, miou in zip(results["seed"], results["miou"], strict=True):
        folder = out / "finetune" / f"random-init-f0.5-s{seed}"
        events = _events(folder / "tensorboard" / "version_0")
        assert [event.value for event in events.Scalars("miou")] == pytest.approx([miou], abs=1e-6)
        assert [event.value for event in events.Scalars("test/miou")] == pytest.approx([miou], abs=1e-6)
        losses = [(event.step, event.value) for event in events.Scalars("train/loss")]
        expected = _csv_steps(folder, "train/loss")  # the CSV log is still written, first
        _assert_same_series(losses, expected)
        assert [step for step, _ in losses] == [4]
        assert "val/miou" in events.Tags()["scalars"]
        hparams = _hparams(events)
        assert (hparams["recipe"], hparams["seed"], hparams["subset_seed"]) == ("random-init", str(seed), str(seed))
        assert (hparams["label_fraction"], hparams["pretrain_steps"], hparams["comparison"]) == ("0.5", "0", "cmp")
        assert hparams["random_init.encoder.name"] == "test_resnet" and hparams["finetune.seed"] == seed
    assert not (out / "mlruns").exists()
