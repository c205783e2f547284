"""What every pretraining method shares: encoder, views, optimiser, checkpoint contents, hooks.

A method is a Lightning module that trains ``self.encoder`` (a
:class:`~geocl.models.Encoder`); finetuning, prediction and comparison load any
method's checkpoint the same way through that attribute and the ``geocl`` entry the
checkpoint carries (recipe, band count and statistics, encoder and method names,
library versions).

A method is built from explicit, typed keyword arguments, like TorchGeo's trainers::

    model = SimCLR("resnet18", in_chans=4, temperature=0.2, view_size=64)

Its own arguments (those of its constructor that are not this base's) are the
``method`` section of a recipe: :func:`parameters_model` derives the recipe model from
the constructor's signature (and :mod:`geocl.methods.registry`, which imports this
module, registers it under the method's name), so types, ranges and defaults are written
once, and the same model validates the arguments given from Python
(:meth:`PretrainMethod.params`).

Everything specific to a method stays with it, reached through hooks the generic
pretraining loop (:mod:`geocl.training`) calls without knowing the method:

* :meth:`PretrainMethod.check_train_data`: refuse training images the method cannot use;
* :meth:`PretrainMethod.train_loader`: the method's own loader for an epoch (regions,
  pairs, ...), or None for the plain seeded loader;
* :attr:`PretrainMethod.reloads_data_every_epoch`: whether that loader changes per epoch;
* Lightning's ``configure_callbacks``: outputs of its own (maps, plots);
* :meth:`PretrainMethod.run_findings`: lines for people on what those outputs show;
* :meth:`PretrainMethod.warm_up`: the stage it trains before its own (GraSS's SimCLR
  epochs, SPPS's epochs before the first mining), so that ``geocl compare`` can flag a
  budget that never reaches the method's own stage (its rows would be another method's).

A method may also be the downstream training itself rather than a pretraining (a
semi-supervised segmenter trained on the labelled and unlabelled tiles of each label
subset). It sets :attr:`PretrainMethod.pretrains` to False and names, in
:attr:`PretrainMethod.serves`, the evaluations whose rows it trains itself (checking its
keys for each in :meth:`PretrainMethod.check_downstream`); the trainings are downstream
trainings, declared by the method's name in :mod:`geocl.finetune.method_trainings`
(this layer imports nothing of ``geocl.finetune``). ``geocl compare`` then pretrains
nothing for it and its rows train the declared function in place of the evaluation's
finetuning, and ``geocl pretrain`` refuses it in one line
(:meth:`PretrainMethod.check_pretraining`). Compare and the evaluations ask the method
class (:meth:`PretrainMethod.trains_rows_of`); they know no method by name.
"""

from __future__ import annotations

import inspect
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import lightning
import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from pydantic import BaseModel, ConfigDict, create_model
from torch import Tensor

from geocl.errors import GeoclError
from geocl.models import create_encoder
from geocl.recipes import AugmentConfig, OptimizerConfig, SchedulerConfig
from geocl.recipes.errors import validated_section
from geocl.transforms import MultiBandViewAugmentation, TwoViews

if TYPE_CHECKING:
    from torch.utils.data import DataLoader, Dataset

#: Checkpoint key under which geocl stores what is needed to use a checkpoint alone.
CHECKPOINT_KEY = "geocl"
#: Constructor arguments every method takes (the other recipe sections), not ``method.*`` keys.
COMMON_ARGUMENTS = (
    "encoder",
    "in_chans",
    "encoder_args",
    "pretrained",
    "weights",
    "band_stats",
    "view_size",
    "augment",
    "optimizer",
    "scheduler",
    "seed",
)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a checkpoint depends on."""
    names = ("geocl", "torch", "timm", "lightly", "lightning", "kornia", "torchgeo")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:  # a library missing from the metadata must not break saving
            found[name] = "unknown"
    return found


def steps_per_epoch(items: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps of one epoch of ``items`` training images, ``batch_size`` a device (at least 1).

    What the learning-rate warm-up counts an epoch as when the run has a step budget
    (``trainer.max_epochs: -1``), and what ``geocl compare`` counts before any work.
    """
    return max(1, (items // max(1, world_size)) // max(1, batch_size))


def check_warmup_fits(warmup_epochs: int, epoch_steps: int, total_steps: int) -> None:
    """Refuse a learning-rate warm-up longer than the run (lightly's schedule would stop with a bare ValueError).

    Args:
        warmup_epochs: the recipe's ``scheduler.warmup_epochs``.
        epoch_steps: optimizer steps of one epoch.
        total_steps: optimizer steps of the whole run.

    Raises:
        GeoclError: key ``scheduler.warmup_epochs``, naming the warm-up and the budget in steps.

    A warm-up is not scaled down to fit: the recipe states it in epochs, and a budget that
    ends inside it never trains at the recipe's learning rate.
    """
    warmup = warmup_epochs * epoch_steps
    if warmup > total_steps:
        epochs = "1 epoch" if warmup_epochs == 1 else f"{warmup_epochs} epochs"
        raise GeoclError(
            f"{epochs} of learning-rate warm-up {'is' if warmup_epochs == 1 else 'are'} {warmup} optimizer steps "
            f"({epoch_steps} an epoch), more than "
            f"the run's budget of {total_steps} steps; lower scheduler.warmup_epochs (0: none) or give the run "
            f"at least {warmup} steps",
            key="scheduler.warmup_epochs",
        )


@dataclass(frozen=True)
class WarmUp:
    """The stage a method trains before its own (see :meth:`PretrainMethod.warm_up`).

    Attributes:
        epochs: epochs before the method's own stage (the index of its first epoch).
        key: the recipe key that sets it (``method.warmup_epochs``).
        trains_as: what the warm-up trains (``simclr``): a budget that ends inside it
            trains only that, never the method itself.
    """

    epochs: int
    key: str
    trains_as: str


class BudgetCosineScheduler(CosineWarmupScheduler):
    """lightly's cosine schedule with warm-up, whose length is the current run's budget.

    A checkpoint stores the schedule's length. Restored as is, a run resumed with a larger
    budget (``trainer.max_epochs`` raised, ``--resume``) would spend its extra steps past
    the schedule's end, at 0.001 of the learning rate. Here a restored schedule keeps the
    current run's length and warm-up, and sets the optimizer's rate for the step it resumes
    at: the run goes on as if it had been planned with the new budget. Resuming with the
    same budget is unchanged.
    """

    _BUDGET = ("max_epochs", "warmup_epochs")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        budget = {name: getattr(self, name) for name in self._BUDGET}
        super().load_state_dict(state_dict)
        self.__dict__.update(budget)
        # the optimizer's state (restored first) holds the rate of the old schedule
        rates = [base * scale(self.last_epoch) for scale, base in zip(self.lr_lambdas, self.base_lrs, strict=True)]
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        self._last_lr = list(rates)


class PretrainMethod(lightning.LightningModule):
    """Base of all pretraining methods.

    Args:
        encoder: a timm model name (any band count; see :func:`geocl.models.create_encoder`).
        in_chans: number of input bands.
        encoder_args: further ``timm.create_model`` arguments (a ViT's patch size, ...).
        pretrained: start from timm's ImageNet weights (never downloaded by geocl itself).
        weights: the weights the encoder starts from (recipe ``encoder.weights``: a TorchGeo
            weights name, a timm tag or a file, see :mod:`geocl.models.weights`); '' = random.
        band_stats: per-band statistics of the training data (``{"mean": [...], "std": [...]}``),
            stored in checkpoints so that downstream tasks normalise alike.
        view_size: side of the augmented views, px.
        augment: keyword arguments of :class:`~geocl.transforms.MultiBandViewAugmentation`
            (a :class:`~geocl.recipes.AugmentConfig` or a mapping).
        optimizer: see :class:`~geocl.recipes.OptimizerConfig` (model or mapping).
        scheduler: see :class:`~geocl.recipes.SchedulerConfig` (model or mapping).
        seed: seed of the per-step augmentation draws (a resumed run draws the same views).

    Attributes:
        name: registry name (set by :func:`~geocl.methods.registry.register_method`).
        encoder: the network being pretrained (what downstream tasks load).
        params: the method's own arguments, validated by its parameter model.
        momentum_encoder_attribute: name of the EMA copy of ``encoder`` in methods that
            keep one (None otherwise); stored in checkpoints so that evaluation can use
            it (``geocl evaluate --momentum-encoder``, as PatchMix, arXiv 2306.12243, evaluates).
        views: two-view augmentation of a batch ``[B, C, H, W]``.
        recipe: the whole recipe the method was built from (plain data), or None when
            it was built from Python; checkpoints store it, or the recipe equivalent to
            the arguments.
    """

    name: ClassVar[str] = ""
    momentum_encoder_attribute: ClassVar[str | None] = None
    #: Whether ``geocl pretrain`` trains this method ahead of the downstream task. False
    #: for a method that is itself a downstream training (see the module docstring):
    #: building it for pretraining raises :meth:`check_pretraining`'s error.
    pretrains: ClassVar[bool] = True
    #: How to run a method that does not pretrain: the end of ``geocl pretrain``'s refusal.
    usage: ClassVar[str] = "run its recipe through `geocl compare`, which trains it at every label subset and seed"
    #: The evaluations (registry names: ``finetune``, ``dice``, ...) whose rows the method
    #: trains itself instead of the evaluation's finetuning; the trainings are declared by
    #: the method's name in :data:`geocl.finetune.method_trainings.METHOD_TRAININGS`.
    serves: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        encoder: str = "resnet18",
        in_chans: int = 3,
        *,
        encoder_args: Mapping[str, Any] | None = None,
        pretrained: bool = False,
        weights: str = "",
        band_stats: Mapping[str, Any] | None = None,
        view_size: int = 96,
        augment: AugmentConfig | Mapping[str, Any] | None = None,
        optimizer: OptimizerConfig | Mapping[str, Any] | None = None,
        scheduler: SchedulerConfig | Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.check_pretraining()
        super().__init__()
        # collects the arguments of the whole constructor chain (the method's own too)
        self.save_hyperparameters()
        for key, value in self.hparams.items():  # checkpoints hold plain data, not geocl classes
            if isinstance(value, BaseModel):
                self.hparams[key] = value.model_dump(mode="json")
        self.params = self._validated_params()
        self.encoder_name = encoder
        self.encoder_args = dict(encoder_args or {})
        self.pretrained = pretrained
        self.weights = weights
        self.in_chans = in_chans
        self.band_stats = (
            dict(band_stats) if band_stats is not None else {"mean": [0.0] * in_chans, "std": [1.0] * in_chans}
        )
        self.view_size = view_size
        self.augment_args = dict(augment.model_dump() if isinstance(augment, BaseModel) else augment or {})
        self.optimizer_config: OptimizerConfig = validated_section("optimizer", OptimizerConfig, optimizer)
        self.scheduler_config: SchedulerConfig = validated_section("scheduler", SchedulerConfig, scheduler)
        self.seed = seed
        self.recipe: dict[str, Any] | None = None
        self.encoder = create_encoder(encoder, in_chans, pretrained, self.encoder_args, weights)
        self.augmentation = MultiBandViewAugmentation.from_config(view_size, self.augment_args)
        self.views = TwoViews(self.augmentation)

    @classmethod
    def parameters_model(cls) -> type[BaseModel]:
        """The model of this method's own arguments (the recipe's ``method`` section)."""
        return parameters_model(cls)

    def _validated_params(self) -> Any:
        own = {key: value for key, value in self.hparams.items() if key not in COMMON_ARGUMENTS}
        return validated_section("method", self.parameters_model(), own)

    @property
    def datamodule(self) -> Any:
        """The data module being fitted (the loop's ``PretrainData``), None outside a fit.

        Lightning attaches it to the trainer at fit time; its ``Trainer`` class does not declare it.
        """
        return getattr(self.trainer, "datamodule", None)

    @property
    def method_name(self) -> str:
        """Registry name of the method."""
        return self.name

    # ------------------------------------------------------------------ hooks

    def check_train_data(self, dataset: Dataset[dict[str, Any]]) -> None:
        """Hook: raise a :class:`GeoclError` for training images this method cannot use."""

    def train_loader(self, data: Any) -> DataLoader[Any] | None:
        """Hook: the method's own train loader for the current epoch, or None for the plain one.

        Args:
            data: the run's :class:`~geocl.training.data.PretrainData` (its ``dataset``,
                ``out`` folder, ``seed``, ``batch_size``, ``trainer`` and ``loader()``).
        """
        return None

    @property
    def reloads_data_every_epoch(self) -> bool:
        """Hook: whether :meth:`train_loader` must be asked again every epoch."""
        return False

    def run_findings(self, out: Path) -> list[str]:
        """Hook: lines for people on what the finished run's own outputs in ``out`` show.

        ``geocl pretrain`` prints them under its final line (e.g. GraSS: do its boxes
        hold one object?). Read from files the run wrote, so a resumed run that trained
        nothing reports the same.
        """
        return []

    @classmethod
    def check_downstream(cls, evaluation: str, params: Any) -> None:
        """Hook: refuse keys that cannot serve ``evaluation`` (one of :attr:`serves`), before any work.

        Asked by :meth:`trains_rows_of`; the default accepts every key.

        Args:
            evaluation: the evaluation's registry name, one of :attr:`serves`.
            params: the recipe's ``method`` section (validated by :meth:`parameters_model`).

        Raises:
            GeoclError: parameters that cannot serve this evaluation (naming the key).
        """

    @classmethod
    def warm_up(cls, params: Any) -> WarmUp | None:
        """Hook: the stage the method trains before its own, in epochs; None when its own starts at step 0.

        ``geocl compare`` flags a recipe whose budget ends inside it: such a run is the
        warm-up's method under this method's name. Asked of the class with the recipe's
        ``method`` section, before anything is built.

        Default, from the method's parameters: a ``warmup_epochs`` parameter is the
        epochs of its parent method before its own stage (GraSS: SimCLR); an enabled
        plug-in section with a ``first_epoch`` (SPPS's ``spps``) is the epochs of the
        method without that plug-in. A method whose own stage starts otherwise overrides this.

        Args:
            params: the recipe's ``method`` section (or the validated parameters).
        """
        epochs = getattr(params, "warmup_epochs", 0)
        if isinstance(epochs, int) and epochs > 0:
            parent = next(
                (
                    klass.name
                    for klass in cls.__mro__[1:]
                    if isinstance(klass, type)
                    and issubclass(klass, PretrainMethod)
                    and klass.name
                    and klass.name != cls.name
                ),
                f"{cls.name} without its own stage",
            )
            return WarmUp(epochs, "method.warmup_epochs", parent)
        fields = getattr(type(params), "model_fields", {})
        for name in fields:
            section = getattr(params, name, None)
            first = getattr(section, "first_epoch", None)
            if (
                isinstance(section, BaseModel)
                and getattr(section, "enabled", False)
                and isinstance(first, int)
                and first > 0
            ):
                return WarmUp(first, f"method.{name}.warmup_epochs", f"{cls.name} without {name}")
        return None

    @classmethod
    def trains_rows_of(cls, evaluation: str, params: Any) -> bool:
        """Whether the method trains the rows of ``evaluation`` itself (it :attr:`serves` it), keys checked.

        True: the evaluation trains its rows with the function
        :data:`geocl.finetune.method_trainings.METHOD_TRAININGS` declares for the method's
        name and the evaluation's, with the keyword interface of the evaluation's finetune
        function, without its architecture options (the method builds its own network)
        and with ``encoder_checkpoint`` None for a method that does not pretrain. False:
        the evaluation's own finetuning of the method's pretrained encoder.

        Args:
            evaluation: the evaluation's registry name (``finetune``, ``frozen``, ``dice``, ...).
            params: the recipe's ``method`` section (validated by :meth:`parameters_model`).

        Raises:
            GeoclError: keys that cannot serve ``evaluation`` (:meth:`check_downstream`); or
                the method pretrains no encoder and does not serve ``evaluation`` (its rows
                would evaluate a random encoder under the method's name).
        """
        if evaluation in cls.serves:
            cls.check_downstream(evaluation, params)
            return True
        if not cls.pretrains:
            raise GeoclError(
                f"method {cls.name!r} pretrains no encoder and has no training of its own for the {evaluation!r} "
                "evaluation; compare it with another protocol or data format",
                key="method.name",
            )
        return False

    @classmethod
    def check_pretraining(cls) -> None:
        """Refuse to build a method that does not pretrain as a pretraining (``geocl pretrain``).

        Raises:
            GeoclError: ``pretrains`` is False; the message ends with :attr:`usage`.
        """
        if not cls.pretrains:
            raise GeoclError(f"method {cls.name!r} is not a pretraining: {cls.usage}", key="method.name")

    # --------------------------------------------------------------- training

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Augmentations draw from torch's global generator; seeding it from the step
        # makes a resumed run draw exactly what the uninterrupted run drew.
        world, rank = self.trainer.world_size, self.trainer.global_rank
        torch.manual_seed(int(self.seed) * 1_000_003 + self.global_step * world + rank)

    def check_finite(self, loss: Tensor) -> Tensor:
        """Stop with a clear error on a NaN or infinite loss, naming the last good checkpoint.

        That is the last checkpoint the run's writer completed (geocl's
        ``AtomicCheckpointIO`` keeps it, the resumed one until it writes another);
        with another writer, the newest file the checkpoint callback wrote or the run
        resumed from that exists; else the message says none was written yet.
        """
        if not torch.isfinite(loss):
            trainer = self.trainer
            writer = getattr(trainer.strategy, "checkpoint_io", None)
            if writer is not None and hasattr(writer, "last_complete"):
                kept = writer.last_complete
            else:
                callback = trainer.checkpoint_callback
                named = [
                    getattr(callback, "last_model_path", ""),
                    getattr(callback, "best_model_path", ""),
                    trainer.ckpt_path,
                ]
                kept = next((path for path in named if path and os.path.isfile(path)), None)
            where = f"the last good checkpoint is {kept}" if kept else "no checkpoint was written yet"
            raise GeoclError(
                f"loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; "
                f"training stopped, {where} (lower optimizer.lr or check the data)",
                key="optimizer.lr",
            )
        return loss

    def parameter_groups(self) -> list[dict[str, Any]] | list[torch.nn.Parameter]:
        """What the optimizer trains: every trainable parameter at the recipe's rate.

        A method that trains parts at different rates returns optimizer groups instead.
        """
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        config = self.optimizer_config
        params = self.parameter_groups()
        if config.name == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
        elif config.name == "adamw":
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        else:
            optimizer = LARS(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        if self.scheduler_config.name == "none":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        epoch = self._steps_per_epoch(total)
        check_warmup_fits(int(self.scheduler_config.warmup_epochs), epoch, total)  # before the first step
        warmup = int(self.scheduler_config.warmup_epochs * epoch)
        scheduler = BudgetCosineScheduler(optimizer, warmup_epochs=warmup, max_epochs=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _steps_per_epoch(self, total: int) -> int:
        """Optimizer steps of one epoch, for warm-ups counted in epochs."""
        epochs = self.trainer.max_epochs or -1
        if epochs > 0:
            return max(1, math.ceil(total / epochs))
        # a step budget (max_epochs -1): Lightning has not sized the epoch yet, the data does
        data = getattr(self.trainer, "datamodule", None)
        if data is not None and hasattr(data, "dataset"):
            return steps_per_epoch(len(data.dataset), data.batch_size, self.trainer.world_size)
        return total

    # ------------------------------------------------------------- checkpoint

    def as_recipe(self) -> dict[str, Any]:
        """The recipe this method was built from, or the recipe its arguments amount to."""
        if self.recipe is not None:
            return self.recipe
        return {
            "name": self.name,
            "seed": self.seed,
            "data": {"view_size": self.view_size},
            "encoder": {
                "name": self.encoder_name,
                "pretrained": self.pretrained,
                "weights": self.weights,
                "args": self.encoder_args,
            },
            "method": {"name": self.name, **self.params.model_dump(mode="json")},
            "augment": self.augment_args,
            "optimizer": self.optimizer_config.model_dump(mode="json"),
            "scheduler": self.scheduler_config.model_dump(mode="json"),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "recipe": self.as_recipe(),
            "method": self.name,
            "encoder": self.encoder_name,
            "in_chans": self.in_chans,
            "band_stats": self.band_stats,
            "encoder_attribute": "encoder",
            "momentum_encoder_attribute": self.momentum_encoder_attribute,
            "starting_weights": self.encoder.starting_weights,
            "versions": library_versions(),
        }


#: :func:`parameters_model` of each method class asked for so far (a class builds its model once).
_PARAMETERS_MODELS: dict[type[PretrainMethod], type[BaseModel]] = {}


def parameters_model(cls: type[PretrainMethod]) -> type[BaseModel]:
    """The pydantic model of a method class's own constructor arguments.

    Walks the class chain up to :class:`PretrainMethod`; a parameter a subclass
    declares again (with another default) replaces its parent's. Built once per class.

    Raises:
        TypeError: an own argument without a default (it could not be a recipe key).
    """
    if cls not in _PARAMETERS_MODELS:
        _PARAMETERS_MODELS[cls] = _build_parameters_model(cls)
    return _PARAMETERS_MODELS[cls]


def _build_parameters_model(cls: type[PretrainMethod]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, PretrainMethod)) or klass is PretrainMethod:
            continue
        if "__init__" not in vars(klass):
            continue
        hints = typing.get_type_hints(klass.__init__, include_extras=True)
        for name, parameter in inspect.signature(klass.__init__).parameters.items():
            if (
                name == "self"
                or name in COMMON_ARGUMENTS
                or parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
            ):
                continue
            if parameter.default is inspect.Parameter.empty:
                raise TypeError(f"{klass.__qualname__}: argument {name!r} needs a default to be a recipe key")
            fields[name] = (hints[name], parameter.default)
    config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, validate_default=True)
    return create_model(f"{cls.__name__}Parameters", __config__=config, __doc__=cls.__doc__, **fields)
