"""Many scenes at once: one Dask task a scene, on a local cluster or an existing one.

``geocl tile`` (and ``geocl predict``) given several scenes hand each scene to
:func:`run_scene_tasks` as one :class:`SceneTask`: the work of that scene alone, with
its own output folder. The tasks run on `Dask distributed
<https://distributed.dask.org>`_: a :class:`~distributed.LocalCluster` of ``workers``
processes (one thread each: a scene is read and written by one process, as in the
serial path) started for the run, or the cluster whose scheduler listens at
``scheduler`` (its workers must see the same paths and have geocl installed).
``workers=0`` runs the same tasks one after the other in this process: the serial
path, whose files the cluster's are byte for byte (a task is the same function on
the same arguments, only elsewhere).

What a run promises:

* **Done is marked last.** After a scene's work returns, its worker writes
  ``OUT/<scene>/done.json`` atomically (:data:`DONE_FILE`: the scene's key, the
  summary and the seconds taken). A scene counts as finished only with that file
  and the same key (inputs and options), so a rerun skips finished scenes and redoes
  the others; the scene's own work resumes from what it left (the tiler reuses the
  tiles it finds).
* **A failed scene does not stop the others.** Each task's error is kept with its
  scene's name (a :class:`~geocl.errors.GeoclError` as its one line; a worker that
  died on a scene, killed or out of memory, as such) and the run finishes every
  other scene before :class:`ManyScenesResult` lists the failures.
* **Quiet.** Dask's logging (worker restarts, failed tasks) is silenced unless
  ``verbose``; failures are reported once, by scene name.

A Dask worker that dies mid-task is replaced by its nanny and the scheduler gives the
task to another worker (up to ``distributed.scheduler.allowed-failures`` times, 3 by
default), so a scene usually survives a lost worker within the run; past that it is
reported failed and the next run redoes it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from geocl.data.malloc import malloc_tuning
from geocl.errors import GeoclError
from geocl.io import atomic_write_text, check_output_folder, write_failure
from geocl.recipes.options import PredictSettings

#: The marker a scene's worker writes last, in the scene's output folder.
DONE_FILE = "done.json"

#: How long to try to reach a running scheduler before giving up.
SCHEDULER_TIMEOUT = "10s"

Status = Literal["done", "skipped", "failed"]


@dataclass(frozen=True)
class SceneTask:
    """One scene's work, as a worker runs it.

    Attributes:
        name: the scene's name (its output folder's, and how failures are reported).
        out: the scene's output folder.
        work: the work itself: a picklable callable (a module-level function, or a
            ``functools.partial`` of one) returning a short summary for people.
        key: what defines the result (inputs and options), JSON-ready; a rerun skips the
            scene only when its marker holds the same key.
    """

    name: str
    out: Path
    work: Callable[[], str]
    key: dict[str, Any]


@dataclass(frozen=True)
class SceneOutcome:
    """What became of one scene.

    Attributes:
        name: the scene's name.
        out: its output folder.
        status: ``"done"`` (by this run), ``"skipped"`` (finished by an earlier run) or ``"failed"``.
        summary: the work's summary (of the earlier run when skipped), or the error's one line.
        seconds: wall time of the work (of the earlier run when skipped; 0 when failed).
    """

    name: str
    out: Path
    status: Status
    summary: str
    seconds: float


@dataclass
class ManyScenesResult:
    """What a run over many scenes did, in the order the scenes were given.

    Attributes:
        outcomes: one per scene.
        where: where the scenes ran: ``"serial"``, on a local cluster of N workers, at a
            scheduler's address, or ``"nothing left to run"``.
        seconds: wall time of the whole run (cluster start included).
    """

    outcomes: list[SceneOutcome] = field(default_factory=list)
    where: str = "serial"
    seconds: float = 0.0

    @property
    def failed(self) -> list[SceneOutcome]:
        """The scenes that failed."""
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]

    def describe(self) -> str:
        """A short report: a count line, then each scene with its summary indented."""
        counts = {status: sum(o.status == status for o in self.outcomes) for status in ("done", "skipped", "failed")}
        lines = [
            f"{len(self.outcomes)} scenes ({self.where}, {self.seconds:.0f} s): {counts['done']} done now, "
            f"{counts['skipped']} done earlier, {counts['failed']} failed"
        ]
        for outcome in self.outcomes:
            label = {"done": "", "skipped": " (done earlier)", "failed": " FAILED"}[outcome.status]
            lines.append(f"{outcome.name}{label}:")
            lines.extend(f"  {line}" for line in outcome.summary.splitlines())
        return "\n".join(lines)

    def failure_message(self) -> str | None:
        """One line naming every failed scene and why, or None when none failed."""
        if not self.failed:
            return None
        reasons = "; ".join(f"{outcome.name}: {outcome.summary}" for outcome in self.failed)
        others = "the others are done, " if len(self.failed) < len(self.outcomes) else ""
        return (
            f"{len(self.failed)} of {len(self.outcomes)} scenes failed ({reasons}); {others}"
            "rerun the same command to redo the failed ones"
        )


def scene_names(scenes: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The output-folder name of each scene: a GeoTIFF's name without ``.tif``, a folder's name.

    Raises:
        GeoclError: when two scenes would share a name (naming both).
    """
    names: dict[str, Path] = {}
    for scene in scenes:
        path = Path(scene)
        name = path.stem if path.suffix.lower() in (".tif", ".tiff") and not path.is_dir() else path.name
        if name in names:
            raise GeoclError(
                f"two scenes would share the output folder {name!r} ({names[name]} and {path}); "
                "rename one, or run them separately",
                key="scene",
            )
        names[name] = path
    return list(names)


def read_done(out: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The done marker of a scene's folder if it holds ``key``, else None (missing, damaged or other key)."""
    try:
        marker = json.loads((Path(out) / DONE_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(marker, dict) or marker.get("key") != _json_ready(key):
        return None
    return marker


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_task(task: SceneTask) -> tuple[str, float]:
    """Run one scene's work and write its done marker last (what a worker runs).

    An earlier marker is removed first, so a run that fails leaves none behind.

    Returns:
        The work's summary and its wall time (s).
    """
    marker = task.out / DONE_FILE
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        with malloc_tuning():  # a worker's entry: malloc tuned for streaming, restored after the scene
            summary = task.work()
    except GeoclError as error:
        # it travels back to the client pickled, and the library errors it was raised from
        # (rasterio's) do not unpickle: Dask would send a bare Exception(repr) instead
        error.__context__ = error.__cause__ = None
        raise
    except Exception as error:
        # a write the disk refused outside geocl.io's atomic writers: the scene's reason in
        # one line, as the CLI gives it; anything else is a bug and travels as it is
        failure = write_failure(error)
        if failure is None:
            raise
        raise failure from None
    seconds = time.perf_counter() - start
    record = {"scene": task.name, "key": _json_ready(task.key), "summary": summary, "seconds": seconds}
    atomic_write_text(marker, json.dumps(record, indent=1))
    return summary, seconds


def run_scene_tasks(
    tasks: Sequence[SceneTask],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> ManyScenesResult:
    """Run every scene's task, skipping those finished by an earlier run.

    Args:
        tasks: one per scene (distinct names and output folders).
        workers: processes of the local cluster (default: one a scene, at most one a
            CPU); 0 runs the tasks here, one after the other.
        scheduler: address of a running Dask scheduler (e.g. ``tcp://10.0.0.5:8786``)
            to use instead of a local cluster.
        progress: show a bar over the scenes.
        verbose: let Dask log (worker restarts, failed tasks).

    Returns:
        A :class:`ManyScenesResult`; its :meth:`~ManyScenesResult.failure_message`
        names the failed scenes.

    Raises:
        GeoclError: if both ``workers`` and ``scheduler`` are given, an output folder
            cannot be written, or the scheduler cannot be reached.
    """
    if workers is not None and scheduler is not None:
        raise GeoclError("give workers (a local cluster) or a scheduler (a running one), not both", key="scheduler")
    if workers is not None and workers < 0:
        raise GeoclError(f"must be >= 0 (0: one scene after the other here), got {workers}", key="workers")
    start = time.perf_counter()
    outcomes: dict[str, SceneOutcome] = {}
    todo: list[SceneTask] = []
    for task in tasks:
        check_output_folder(task.out, key="out")
        marker = read_done(task.out, task.key)
        if marker is not None:
            outcomes[task.name] = SceneOutcome(
                task.name, task.out, "skipped", str(marker.get("summary", "")), float(marker.get("seconds", 0.0))
            )
        else:
            todo.append(task)
    where = "nothing left to run"
    if todo:
        if workers == 0:
            where = "serial"
            run = _run_serially(todo, progress, verbose)
        else:
            count = workers or min(len(todo), os.cpu_count() or 1)
            where = f"Dask scheduler {scheduler}" if scheduler else f"local Dask cluster of {count} workers"
            run = _run_on_dask(todo, count, scheduler, progress, verbose)
        for outcome in run:
            outcomes[outcome.name] = outcome
    ordered = [outcomes[task.name] for task in tasks]
    return ManyScenesResult(ordered, where, time.perf_counter() - start)


def _failure(task: SceneTask, error: BaseException, verbose: bool) -> SceneOutcome:
    if isinstance(error, GeoclError):
        reason = str(error)
    elif type(error).__name__ == "KilledWorker":  # by name: the serial path does not import Dask
        reason = "its worker died on it (killed, or out of memory)"
    else:  # a bug: say what, and where with --verbose
        reason = f"{type(error).__name__}: {error}"
        if verbose:
            traceback.print_exception(error)
    return SceneOutcome(task.name, task.out, "failed", reason, 0.0)


def _bar(total: int, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="scenes", unit="scene", disable=not progress)


def _run_serially(tasks: Sequence[SceneTask], progress: bool, verbose: bool) -> Iterator[SceneOutcome]:
    with _bar(len(tasks), progress) as bar:
        for task in tasks:
            try:
                summary, seconds = run_task(task)
                yield SceneOutcome(task.name, task.out, "done", summary, seconds)
            except Exception as error:
                yield _failure(task, error, verbose)
            bar.update()


def _run_on_dask(
    tasks: Sequence[SceneTask], workers: int, scheduler: str | None, progress: bool, verbose: bool
) -> Iterator[SceneOutcome]:
    from distributed import as_completed

    with _client(workers, scheduler, verbose) as client:
        # a key of its own: a scheduler shared with other runs must not take this task for theirs
        run_id = uuid.uuid4().hex[:8]
        waiting = list(tasks)
        running: dict[Any, SceneTask] = {}

        def submit_while_threads_are_free() -> list[Any]:
            # no more scenes in flight than the cluster has threads (counted anew, workers
            # may come and go): Dask would queue a second scene on a busy worker, where
            # that worker's death would take it down too, and an idle one would have to steal it
            free = max(1, sum(client.nthreads().values())) - len(running)
            submitted = []
            while waiting and free > 0:
                task = waiting.pop(0)
                future = client.submit(run_task, task, key=f"scene-{task.name}-{run_id}", retries=0)
                running[future] = task
                submitted.append(future)
                free -= 1
            return submitted

        done = as_completed(submit_while_threads_are_free())
        with _bar(len(tasks), progress) as bar:
            for future in done:
                task = running.pop(future)
                try:
                    error = future.exception()
                except Exception as lost:
                    error = lost
                if error is None:
                    summary, seconds = future.result()
                    yield SceneOutcome(task.name, task.out, "done", summary, seconds)
                else:
                    yield _failure(task, error, verbose)
                bar.update()
                done.update(submit_while_threads_are_free())


@contextmanager
def _client(workers: int, scheduler: str | None, verbose: bool) -> Iterator[Any]:
    """A Dask client: of a running scheduler, or of a local cluster started (and closed) here."""
    from distributed import Client, LocalCluster

    level = logging.WARNING if verbose else logging.CRITICAL
    logger = logging.getLogger("distributed")
    previous = logger.level
    logger.setLevel(level)
    try:
        if scheduler is not None:
            try:
                client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as error:
                raise GeoclError(f"cannot reach the Dask scheduler at {scheduler}: {error}", key="scheduler") from None
            with client:
                yield client
            return
        # processes: GDAL and numpy release the GIL unevenly, and a scene's memory is
        # returned when its worker is; no dashboard (a port users did not ask for)
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=level
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    finally:
        logger.setLevel(previous)


# ------------------------------------------------------------------------- tile


def tile_task(scene: str, out: str, mask: str | None, options: Any) -> str:
    """Tile one scene into ``out`` with its map (what a worker runs for ``geocl tile``).

    Returns:
        The tiling summary and the map's path.
    """
    from geocl.data.tiler import tile_scene
    from geocl.report.maps import plot_tile_index

    summary = tile_scene(scene, out, mask=mask, options=options, progress=False)
    plot = plot_tile_index(out, Path(out) / "tiles.png")
    return f"{summary.describe()}\n  map: {plot}"


def tile_scenes(
    scenes: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    masks: Sequence[str | os.PathLike[str]] | None = None,
    options: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> ManyScenesResult:
    """Tile several scenes, each into ``out/<scene name>/`` (a tile set of its own), one task a scene.

    Args:
        scenes: GeoTIFFs or folders of GeoTIFFs, one a scene.
        out: the parent of the scenes' tile sets.
        masks: one class mask a scene, in the same order, or None.
        options: the :class:`~geocl.data.tiler.TilingOptions` of every scene.
        workers: see :func:`run_scene_tasks` (0: serially, here).
        scheduler: see :func:`run_scene_tasks`.
        progress: show a bar over the scenes.
        verbose: let Dask log.

    Raises:
        GeoclError: if the masks do not pair with the scenes, two scenes share a name,
            or as :func:`run_scene_tasks`; a scene's own errors are in the result.
    """
    tasks = tile_tasks(scenes, out, masks=masks, options=options)
    return run_scene_tasks(tasks, workers=workers, scheduler=scheduler, progress=progress, verbose=verbose)


def tile_tasks(
    scenes: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    masks: Sequence[str | os.PathLike[str]] | None = None,
    options: Any = None,
) -> list[SceneTask]:
    """The :class:`SceneTask` of each scene of :func:`tile_scenes` (same arguments)."""
    from geocl.data.tiler import TilingOptions

    options = options or TilingOptions()
    options.validate()
    if masks is not None and len(masks) != len(scenes):
        raise GeoclError(
            f"give one mask a scene, in the same order: {len(scenes)} scenes but {len(masks)} masks", key="mask"
        )
    out = check_output_folder(out, key="out")
    tasks = []
    for index, name in enumerate(scene_names(scenes)):
        scene = str(Path(scenes[index]).resolve())
        mask = None if masks is None else str(Path(masks[index]).resolve())
        folder = out / name
        key = {"command": "tile", "scene": scene, "mask": mask, "options": asdict(options)}
        tasks.append(SceneTask(name, folder, partial(tile_task, scene, str(folder), mask, options), key))
    return tasks


# ---------------------------------------------------------------------- predict


def predict_task(checkpoint: str, scene: str, out: str, options: dict[str, Any]) -> str:
    """Predict one scene into the GeoTIFF ``out`` (what a worker runs for ``geocl predict``).

    Safe in a worker: every file is written atomically (a temporary name beside it,
    unique per process, renamed when complete), so a killed or retried task leaves either
    the old file or the new one; nothing is printed and no progress bar is drawn; memory
    is bounded by ``options["block"]``, not by the scene; the model is loaded each call
    (about a second), on CUDA where the worker has it, with torch's threads as the process
    set them.

    Args:
        checkpoint: made by ``geocl finetune``.
        scene: the scene (a GeoTIFF, or a folder predicted as one mosaic).
        out: the prediction GeoTIFF (its preview, and probabilities when asked for, beside it).
        options: the fields of a validated :class:`~geocl.recipes.options.PredictSettings`.

    Returns:
        The prediction's summary (paths written, size, seconds).
    """
    from geocl.finetune.inference import predict_with_checkpoint

    return predict_with_checkpoint(checkpoint, scene, out, progress=False, **options).describe()


def predict_scenes(
    checkpoint: str | os.PathLike[str],
    scenes: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    options: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> ManyScenesResult:
    """Predict several scenes with one checkpoint, each into ``out/<name>/<name>.tif``, one task a scene.

    Beside each prediction its worker (:func:`predict_task`) writes ``<name>.png``, and
    ``<name>_probabilities.tif`` when asked for. Each task loads the model itself (about a
    second), on CUDA where the worker has it.

    Args:
        checkpoint: made by ``geocl finetune``.
        scenes: GeoTIFFs or folders of GeoTIFFs, one a scene.
        out: the parent of the scenes' folders.
        options: :class:`~geocl.recipes.options.PredictSettings` (or a mapping of its
            fields) of every scene; default: its defaults.
        workers: see :func:`run_scene_tasks` (0: serially, here).
        scheduler: see :func:`run_scene_tasks`.
        progress: show a bar over the scenes.
        verbose: let Dask log.

    Raises:
        GeoclError: if the checkpoint is missing, two scenes share a name, or as
            :func:`run_scene_tasks`; a scene's own errors are in the result.
    """
    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.is_file():
        raise GeoclError("checkpoint not found", path=checkpoint, key="checkpoint")
    settings = options
    if not isinstance(settings, PredictSettings):
        from pydantic import ValidationError

        from geocl.recipes.errors import validation_error

        try:
            settings = PredictSettings.model_validate(dict(options or {}))
        except ValidationError as error:
            raise validation_error(error, model=PredictSettings) from None
    settings_dict = settings.model_dump()
    out = check_output_folder(out, key="out")
    stat = checkpoint.stat()
    tasks = []
    for index, name in enumerate(scene_names(scenes)):
        scene = str(Path(scenes[index]).resolve())
        folder = out / name
        key = {
            "command": "predict",
            "scene": scene,
            "options": settings_dict,
            "checkpoint": {"path": str(checkpoint), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        }
        work = partial(predict_task, str(checkpoint), scene, str(folder / f"{name}.tif"), settings_dict)
        tasks.append(SceneTask(name, folder, work, key))
    return run_scene_tasks(tasks, workers=workers, scheduler=scheduler, progress=progress, verbose=verbose)
