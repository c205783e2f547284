"""Comparisons (``geocl compare``): pretrain several recipes, then evaluate each encoder at several label subsets and seeds.

The downstream evaluation is an :class:`~geocl.evaluation.protocol.Evaluation`, chosen
from the recipes' ``data.format`` through the registry of :mod:`geocl.evaluation`:
tile sets get ``finetune`` (a segmenter finetuned at each label fraction, mIoU on the
test tiles), image folders and CIFAR batches get ``knn-probe`` (kNN and linear-probe
top-1 of the frozen encoder on the val split, with all labels). Compare knows no task
beyond that interface; a new evaluation needs no change here.

For every recipe (in the order given):

1. load it with the shared overrides plus ``out=<out>/pretrain/<recipe file stem>``;
2. pretrain it, or reuse the finished run in that folder (``metrics.json`` present and
   ``config.yaml`` equal to the resolved recipe); an interrupted run (``last.ckpt``
   but no ``metrics.json``) of the same recipe is resumed;
3. evaluate its encoder at every label subset of the evaluation and every seed (seeds
   ``0 .. seeds-1``), each into its run folder: ``finetune/<name>-f<fraction>-s<seed>``
   (one subset per label fraction), ``evaluate/<name>-s<seed>`` (natural images: one
   subset, all labels, whatever the fractions).

Then the same runs from a random encoder (row ``random-init``, method ``none``) on the
first recipe's data with its encoder architecture, initialised with each seed (the
first recipe that pretrains: see below).

Budgets: ``pretrain_steps`` gives every recipe the same optimizer steps; several budgets
sweep them (``pretrain/<stem>-<N>steps``, one report section per budget,
``results_budget.png``: the score against pretraining steps, and each recipe's paired
gain from one budget to the next, in ``results.md`` and ``results_budget_gains.csv``:
where its curve flattens). Budget 0 is random init:
every recipe's encoder before its first step is the same random encoder (the encoder
section, initialised with the row's seed), so step 0 is *the* random-init row, evaluated
once with ``pretrain_steps`` 0, not a copy per recipe (identical encoders are not
independent rows). It has its own report section and is the first point of each curve
whose recipe builds that encoder (a recipe with another encoder section, or one whose
method pretrains nothing, starts at its first budget, which a line says). ``0`` alone
runs the random-init rows only; ``0`` when no recipe pretrains is refused. Budget 0
pretrains nothing, so it is never checked against a warm-up nor flagged.

Methods that pretrain nothing: a method class with ``pretrains = False`` (a
semi-supervised segmenter) is itself the downstream training. Step 2 then only records
the recipe in its pretraining folder (``config.yaml``; a different recipe recorded
there is refused as for a pretraining), and each row trains the training that
:mod:`geocl.finetune.method_trainings` declares for the method and the evaluation (the
evaluations it ``serves``, :meth:`geocl.methods.base.PretrainMethod.trains_rows_of`) in
place of the evaluation's finetuning, on the same label
subset, seed and budget, so that its rows pair with every other recipe's. A method that
pretrains nothing and has no training for the comparison's evaluation is refused
before any work. The random-init row takes the data and encoder of the first recipe
that pretrains (its rows are reused whatever batch size and workers that recipe sets for
pretraining, which a random init never uses); when none does, there is no random-init
row (there is no pretraining to measure, and each such recipe trains from random init
itself: pair it with its own supervised baseline). Compare asks the method class; it knows no method by name.

Output folder::

    results.csv   one row per (recipe, subset, seed), columns :func:`results_columns`:
                  recipe, method, evaluation, label_fraction (1.0 for all labels),
                  subset_seed (the seed that drew the labelled subset), seed,
                  the evaluation's metrics (miou; knn_top1, probe_top1), status ("ok" or
                  "failed: <message>"), seconds, checkpoint (the finetuned model; the
                  evaluated encoder); rewritten after every row
    results.md    mean ± std per recipe and subset (see geocl.report.table), then each
                  recipe's mean [95 % t interval] and its paired difference to the
                  baseline recipe [95 % bootstrap interval], wins/losses and whether it
                  is distinguishable (see geocl.report.paired), then the same for every
                  two other recipes, the one ahead first (geocl.report.paired.pairwise_differences)
    results.png   the metrics against label fraction (bars when there is one)
    results_paired.png  the paired differences with their intervals (forest plot)
    results_pairwise.csv  the pairs besides the baseline's (three recipes or more, random init included)

Pairs: every recipe (and random-init) runs the same grid of label subsets and
training seeds. By default a run draws its subset with its training seed; with
``subset_seeds`` N the subsets are drawn with subset seeds 0..N-1 apart from the
training seeds 0..M-1, so N x M runs per fraction pair up across recipes.
    pretraining.csv  each recipe's pretraining as spent: steps, samples seen, seconds, final
                  loss, seed (``pretrain_steps`` gives every recipe the same step budget)
    pretrain/     one pretraining run folder per recipe
    finetune/     (or evaluate/) one run folder per row, with its ``row.json`` (the
                  settings that made it, see Resuming)
    comparison.json  the evaluations' settings of the report beside it

Pretraining seeds: by default each recipe is pretrained once, so the intervals cover
label subsets and training seeds but not the pretraining's own randomness (its
initialisation, the order of its batches, its augmentations), and a difference between
two recipes may be one lucky pretraining. ``pretrain_seeds`` N pretrains every recipe N
times, with recipe seeds ``seed .. seed+N-1`` (``pretrain/<stem>[-<N>steps]-p<k>``;
``k`` 0 is the usual folder, so the first pretraining of an earlier comparison is
reused), and the row of training seed ``s`` reads pretraining ``s mod N``. The grid
and its pairs stay as they were; each pair now also holds independent pretrainings,
and a paired difference is the mean of the N pretrainings' own, with Student's t
interval over them (:mod:`geocl.report.paired`): the pairs that share a pretraining do
not count as independent draws of it. A pretrained recipe's mean, its error bars and
its points on the learning curves take their interval over its pretrainings' means
likewise. Like the random-init row, whose encoder is
initialised with the row's seed, every seed then measures a different encoder.
``seeds`` must be a multiple of N. A method that pretrains nothing trains at every row
with the row's seed and is recorded once. ``pretraining.csv`` lists every pretraining
with its ``seed``.

Identical label subsets are one subset: a label fraction of 1 holds every label
whatever its subset seed (and a tile set's fraction that rounds up to every train tile
too, :meth:`~geocl.evaluation.protocol.Evaluation.subset_identity`), so its subset seeds
collapse into the first, which a line says: six runs on the same labels with the same
seed are one run repeated, not six pairs.

Budgets (before any work): a recipe whose learning-rate warm-up
(``scheduler.warmup_epochs``) is longer than its step budget is refused, naming the key
and both lengths in steps; one whose budget ends inside its method's own warm-up stage
(:meth:`~geocl.methods.base.PretrainMethod.warm_up`: GraSS's SimCLR epochs, SPPS's epochs
before mining) is flagged: a line now, a ⚠ and the reason in ``results.md`` and a
``flag`` in ``results_summary.csv`` (its rows are the warm-up's method under another name).

Failures: an exception while pretraining marks all rows of that recipe failed; one
while evaluating marks that row failed, as does a metric that is not a finite number;
either way the other rows still run. User errors are raised before any work starts,
since finding a typo after hours of pretraining helps nobody: bad options when
:class:`~geocl.recipes.compare_options.CompareOptions` is built, then a bad recipe file, two
recipes with the same file stem or name, recipes that need different evaluations
(tile sets and natural images: compare them separately), evaluation options an
evaluation cannot use, a learning-rate warm-up longer than the budget and an ``out``
that cannot be written.

The outcome: :func:`run_compare` returns every row, failed ones included;
:func:`describe_failures` turns the failed rows into the one line a command shows
before it exits non-zero (the reasons are in ``results.md``).

Resuming: rerunning the same command after a crash redoes only what is missing.
A row is reused only when everything that determines it is unchanged. Every finished
run folder holds ``row.json``, the row's settings: the evaluation and all its options
(:meth:`~geocl.evaluation.protocol.Evaluation.settings`: ``--finetune-lr``,
``--finetune-arch``, ``--epochs``...), label fraction, subset seed, seed, the test set,
and what the encoder is (the pretraining recipe, or the random init's data and
encoder). A run folder whose result file (``metrics.json``, ``evaluation.json``) holds
every metric is read instead of rerun when its ``row.json`` records the same settings
and its encoder came from a pretraining that was itself reused (a recipe pretrained
afresh in this call has its runs redone: old ones would describe the old encoder).
A rerun with other options therefore reuses the pretrainings and redoes the rows; the
old rows never enter the new table. A folder without ``row.json`` (made before compare
recorded it) is redone too. What the report is of (the evaluations' settings, recipes,
budgets, baseline, label fractions, seeds, overrides) is kept in ``comparison.json``: when
it changed, the earlier report (``results.*``, ``pretraining.csv``, ``environment.json``)
is moved to ``report.stale-<n>/`` first.

A comparison folder can be moved or copied: nothing recorded in it names the folder
(the ``out`` of a pretraining's ``config.yaml`` is not compared, a row's checkpoint is
recorded relative to the comparison folder), so a rerun in the new place reuses
everything.

Runs redone are never mixed with the old ones: a run folder that is not reused but
holds files (the runs of a recipe pretrained afresh, a run made with other settings,
a run interrupted before its result file) is first moved aside to
``<folder>.stale-<n>`` (the smallest free ``n``), which a line of the progress output
says, naming the settings that changed. Nothing is deleted: the old model and figures
stay there until the user removes them. (``geocl finetune`` itself refuses a folder
that holds a run; compare decides for its own folders.)

Interruption: SIGTERM (a cluster's time limit, ``kill PID``, a signal to the process
group) stops the comparison: :func:`run_compare` raises :class:`CompareInterrupted` (a
:class:`KeyboardInterrupt`; ``geocl compare`` says so in one line and exits 130). The rows
finished before stay in ``results.csv``; the pretraining or row that was running, and
those after it, are not recorded, and rerunning the same command resumes: an
interrupted pretraining continues from its last checkpoint, an interrupted row is moved
aside and redone. Failed rows are never reused: a rerun runs them again
(:mod:`geocl.experiments.process`).

Modules: :mod:`~geocl.experiments.plan` (what runs, checked before any work, with
:mod:`~geocl.experiments.candidates` and :mod:`~geocl.experiments.budgets`),
:mod:`~geocl.experiments.pretraining` (run, resume or reuse each pretraining),
:mod:`~geocl.experiments.rows` (run or reuse each row, recorded as it finishes, with
:mod:`~geocl.experiments.records`), :mod:`~geocl.experiments.results` (the report files),
:mod:`~geocl.experiments.failures`, :mod:`~geocl.experiments.tracking` (experiment logs),
:mod:`~geocl.experiments.process` (process-wide state, restored) and
:mod:`~geocl.experiments.runner` (:func:`run_compare`, the loop).
"""

from geocl.experiments.failures import describe_failures
from geocl.experiments.process import CompareInterrupted
from geocl.experiments.results import results_columns
from geocl.experiments.runner import run_compare
from geocl.recipes.compare_options import CompareOptions

__all__ = ["CompareInterrupted", "CompareOptions", "describe_failures", "results_columns", "run_compare"]
