"""The options of ``geocl compare``: :class:`CompareOptions` and its own section, :class:`RetrievalOptions`.

``geocl compare`` pretrains several recipes and scores each with the rows of one
evaluation (or two: ``protocol: both``); :class:`CompareOptions` holds the whole
command, with the settings of every row in sections: ``finetune``
(:class:`~geocl.recipes.options.FinetuneOptions`, tile sets and volumes), ``evaluate``
(:class:`~geocl.recipes.options.EvaluateOptions`, natural images) and ``retrieval``
(:class:`RetrievalOptions`, ``protocol: retrieval``). As in :mod:`geocl.recipes.options`
(the conventions are its), each field holds its type, default, range, choices and
description, cross-field rules are validators, and the CLI derives the flags of
``geocl compare`` from these models. Importing this module imports pydantic only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from geocl.recipes.errors import field_relation
from geocl.recipes.options import EvaluateOptions, FinetuneOptions, LabelFraction, OptionsModel, error_at
from geocl.recipes.types import Integer

__all__ = ["CompareOptions", "RetrievalOptions"]


class RetrievalOptions(OptionsModel):
    """How ``geocl compare --protocol retrieval`` trains the dual encoder of every row
    (:class:`geocl.evaluation.retrieval.TextRetrieval`)."""

    recipe: Path | None = Field(
        default=None,
        description="the retrieval recipe whose method, optimizer and trainer every row uses "
        "(default: recipes/retrieval.yaml)",
    )
    max_steps: Integer | None = Field(
        default=None, ge=1, description="optimizer steps of each dual-encoder training (default: the recipe's epochs)"
    )
    batch_size: Integer | None = Field(default=None, ge=1, description="training batch size (default: the recipe's)")
    overrides: list[str] = Field(
        default=[], description="dotted override of the retrieval recipe, e.g. method.embed_dim=128"
    )
    progress: bool = Field(default=True, description="show the progress bar of each dual-encoder training")


class CompareOptions(OptionsModel):
    """``geocl compare``: pretrain several recipes, finetune (or evaluate) each; one table."""

    recipes: list[Path] = Field(
        min_length=1, description="recipe files; their file names name the pretraining folders, their names the rows"
    )
    label_fractions: list[LabelFraction] = Field(
        default=[0.01, 0.05, 0.2], min_length=1, description="fractions of the labelled train tiles to finetune with"
    )
    seeds: Integer = Field(default=3, ge=1, description="training seeds per label subset (seeds 0 .. seeds-1)")
    subset_seeds: Integer | None = Field(
        default=None,
        ge=1,
        description="label subsets per fraction, drawn apart from the training seeds (subset seeds 0 .. N-1); "
        "default: each run draws its subset with its training seed",
    )
    pretrain_seeds: Integer = Field(
        default=1,
        ge=1,
        description="pretrain each recipe N times, with recipe seeds seed .. seed+N-1; the row of training seed s "
        "evaluates pretraining s mod N, and a paired difference is the mean of the N pretrainings' own, with "
        "Student's t interval over them, so it covers the pretraining's own variation; a recipe's mean, error "
        "bars and learning-curve points likewise (seeds must be a multiple of N)",
    )
    baseline: str | None = Field(
        default=None, description="recipe name the paired differences are taken to (default: the first recipe)"
    )
    pretrain_steps: list[Annotated[Integer, Field(ge=0)]] | None = Field(
        default=None,
        description="pretrain every recipe for this many optimizer steps (overrides their epochs); several "
        "budgets sweep them (mIoU against pretraining steps); 0 is random init (the random-init rows, evaluated "
        "once: every curve's first point); default: each recipe's own trainer settings",
    )
    snapshots: bool = Field(
        default=False,
        description="a sweep trains each recipe once, to its largest budget, and evaluates the smaller budgets "
        "on snapshots of that run (points on one training curve, whose learning rate followed the long run's "
        "schedule); default: a run per budget",
    )
    protocol: Literal["finetune", "frozen", "both", "retrieval"] = Field(
        default="finetune",
        description="tile sets: finetune a segmenter, train a dense linear probe on the frozen encoder "
        "(cheap and far less noisy: it measures the representation itself), both in one table, or "
        "text-to-tile retrieval (a dual encoder trained on captions from the masks, hit@k and MRR)",
    )
    min_test_pixels: Integer = Field(
        default=10_000,
        ge=0,
        description="warn, and flag the class's IoU, when a class has fewer labelled test pixels than this",
    )
    deterministic: bool = Field(
        default=False, description="use torch's deterministic algorithms (slower; still not equal across processors)"
    )
    out: Path = Field(default=Path("runs/compare"), description="the comparison folder")
    overrides: list[str] = Field(
        default=[], description="dotted recipe override for every recipe, e.g. trainer.max_epochs=1"
    )
    finetune: FinetuneOptions = Field(
        default_factory=FinetuneOptions, description="finetuning of every row (tile sets)"
    )
    evaluate: EvaluateOptions = Field(
        default_factory=EvaluateOptions, description="evaluation of every row (natural images)"
    )
    retrieval: RetrievalOptions = Field(
        default_factory=RetrievalOptions, description="dual-encoder training of every row (--protocol retrieval)"
    )

    @field_validator("label_fractions")
    @classmethod
    def _once_each(cls, fractions: list[float]) -> list[float]:
        return list(dict.fromkeys(fractions))  # repeats dropped, order kept

    @field_validator("pretrain_steps", mode="before")
    @classmethod
    def _one_budget_or_several(cls, steps: Any) -> Any:
        return [steps] if isinstance(steps, int | str) and not isinstance(steps, bool) else steps

    @field_validator("pretrain_steps")
    @classmethod
    def _budgets_ascending(cls, steps: list[int] | None) -> list[int] | None:
        return None if steps is None else sorted(set(steps))

    @model_validator(mode="after")
    def _pretrainings_share_the_seeds(self) -> CompareOptions:
        if self.seeds % self.pretrain_seeds:
            rule = field_relation(
                f"must divide {{seeds}} ({self.seeds}): the rows of training seed s read pretraining "
                f"s mod {self.pretrain_seeds}, and each pretraining serves as many rows",
                seeds="seeds",
            )
            raise error_at("CompareOptions", "pretrain_seeds", self.pretrain_seeds, rule)
        return self

    @model_validator(mode="after")
    def _snapshots_need_a_sweep(self) -> CompareOptions:
        trained = [steps for steps in self.pretrain_steps or [] if steps > 0]
        if self.snapshots and len(trained) < 2:
            rule = field_relation(
                "needs at least two budgets above 0 in {pretrain_steps} (the largest is trained, the others are "
                "its snapshots)",
                pretrain_steps="pretrain_steps",
            )
            raise error_at("CompareOptions", "snapshots", self.snapshots, rule)
        return self

    @model_validator(mode="after")
    def _probe_stages_need_the_probe(self) -> CompareOptions:
        # the finetune rows of protocol both have no probe: the stages are the frozen rows'
        if self.finetune.probe_stages is not None and self.protocol not in ("frozen", "both"):
            rule = field_relation(
                f"applies to the frozen protocol alone (its dense linear probe): compare with protocol frozen or "
                f"both, not {self.protocol}"
            )
            raise error_at("CompareOptions", ("finetune", "probe_stages"), self.finetune.probe_stages, rule)
        return self
