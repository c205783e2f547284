"""The recipes under comparison: each loaded with the comparison's overrides, folder layout and step budget."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geocl.errors import GeoclError
from geocl.methods import load_recipe
from geocl.recipes.compare_options import CompareOptions
from geocl.report.table import RANDOM_INIT

__all__ = ["Candidate", "check_unique_names", "load_candidate", "method_class_of"]


@dataclass
class Candidate:
    """One recipe under comparison: its file, loaded recipe and table row name."""

    path: Path
    recipe: Any
    #: a budget evaluated on a snapshot of a longer run (``--snapshots``): that run
    snapshot_of: Candidate | None = None
    #: which of the recipe's pretrainings (``--pretrain-seeds``): recipe seed + replica
    replica: int = 0

    @property
    def name(self) -> str:
        return str(self.recipe.name)

    @property
    def pretrains(self) -> bool:
        """Whether its method pretrains an encoder (else it trains at every row: one run serves every seed)."""
        cls = method_class_of(self.recipe)
        return cls is None or bool(cls.pretrains)


def load_candidate(
    path: Path,
    options: CompareOptions,
    steps: int | None = None,
    sweep: bool = False,
    snapshot_steps: list[int] | None = None,
    replica: int = 0,
) -> Candidate:
    """Load one recipe with the shared overrides, compare's own ``out`` and the step budget ``steps``.

    In a sweep of budgets each budget pretrains into ``pretrain/<stem>-<steps>steps``;
    ``snapshot_steps`` are the shorter budgets that run keeps snapshots of. Replica ``k``
    above 0 (``--pretrain-seeds``) is the same recipe with its seed raised by ``k``, in
    ``pretrain/<stem>[-<steps>steps]-p<k>``; replica 0 is the recipe as written.
    """
    path = Path(path)
    folder = path.stem if not sweep else f"{path.stem}-{steps}steps"
    if replica:
        folder += f"-p{replica}"
    # Last, so it wins over an ``out=`` among the user's overrides: compare owns the layout.
    overrides = [*options.overrides, f"out={Path(options.out) / 'pretrain' / folder}"]
    if steps is not None:
        # one budget for every recipe: the same optimizer steps, whatever their epoch lengths
        overrides += [f"trainer.max_steps={steps}", "trainer.max_epochs=-1"]
    if snapshot_steps:
        overrides.append(f"trainer.snapshot_steps=[{','.join(str(step) for step in snapshot_steps)}]")
    try:
        recipe = load_recipe(path, overrides)
    except GeoclError as exc:
        # Loading needs the recipe's method registered. The built-in ones register on
        # importing geocl.methods, which pulls in Lightning (seconds); import it only
        # when the recipe's method section is refused (its method not registered yet),
        # then try again.
        if not (exc.key or "").startswith("method") or "geocl.methods" in sys.modules:
            raise
        import geocl.methods  # noqa: F401

        recipe = load_recipe(path, overrides)
    if replica:
        recipe = load_recipe(path, [*overrides, f"seed={int(recipe.seed) + replica}"])
    return Candidate(path, recipe, replica=replica)


def check_unique_names(candidates: list[Candidate]) -> None:
    """Folder names (file stems) and row names (``name`` fields) must not collide."""
    stems: dict[str, Path] = {}
    names: dict[str, Path] = {}
    for candidate in candidates:
        stem, name = candidate.path.stem, candidate.name
        if stem in stems:
            raise GeoclError(
                f"same file name as {stems[stem]}: both would pretrain into pretrain/{stem}; rename one",
                path=candidate.path,
            )
        if name in names:
            raise GeoclError(
                f"name {name!r} is also the name of {names[name]}; rows need distinct names", path=candidate.path
            )
        if name == RANDOM_INIT:
            raise GeoclError(f"name {name!r} is reserved for the random-init baseline", path=candidate.path)
        if "/" in name or "\\" in name:
            raise GeoclError(f"name {name!r} names run folders and must not contain a slash", path=candidate.path)
        stems[stem], names[name] = candidate.path, candidate.path


def method_class_of(recipe: Any) -> Any:
    """The method class a recipe names, or None (a method registered by its parameters alone).

    Method classes register when :mod:`geocl.methods` is imported, and no recipe can
    name one before, so nothing is imported here (compare's own tests run without Lightning).
    """
    registry = sys.modules.get("geocl.methods.registry")
    return None if registry is None else registry.METHODS.get(str(recipe.method.name))
