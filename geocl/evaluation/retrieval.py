"""Text -> tile retrieval as a downstream evaluation: hit@k, MRR and Recall@k on the test split.

One run (one row of ``geocl compare --protocol retrieval``) trains the dual encoder of
the retrieval recipe (``recipes/retrieval.yaml``: :mod:`geocl.methods.retrieval`) on the
compared recipe's data, its image encoder initialised from the row's pretraining
checkpoint (random init for the ``random-init`` row), then scores text -> image
retrieval on the held-out gallery. So the rows compare what SimCLR, GraSS, ... give the
image side of a retrieval model, with the paired intervals of the comparison protocol.

Gallery and queries: the test split of a tile set (spatially disjoint from the train
split: the tiler assigns splits by blocks and drops val/test tiles that overlap train
tiles), or the val split of natural images (CIFAR: the test batch). Every captioned
gallery item gives one query, its full caption. Relevance (CLAIRES, arXiv 2306.15651,
does not say which it used, so both are reported):

* exact pair (``pair_*``): only the item the caption was made from is relevant;
* attribute level (``attr_*``): every item whose attributes include the caption's.

Metrics (:mod:`geocl.retrieval.metrics`): hit@{1,3,5,10}, MRR, Recall@{1,5,10} and their
mean (``attr_mean_recall``; under exact pairs Recall@k is hit@k), ties counted
pessimistically. Extra columns (not compared with intervals): the gallery size and
query count, what a random ranking would score on the same relevant sets
(``random_*``), and the probe set, reported separately:

* relations: "A next to B" and "B next to A" (the same relevant set) and "L crossing B"
  for every relation in the gallery: ``relation_hit3``, ``relation_mrr``, and
  ``swap_agreement``, the share of the top 3 two swapped queries have in common (1 for a
  model that reads "next to" as symmetric, as it should);
* negations: "A without B" wherever the gallery has A both with and without B:
  ``negation_hit3``, ``negation_mrr``, and ``negation_violation``, the share of the top 3
  that do contain B, beside ``plain_violation``, the same share for the query "A" (a
  model that ignores "without" scores them alike; expect it to fail).

Only text -> image retrieval is measured, the use CLAIRES states; image -> text is not
reported.

A run folder holds ``train/`` (the dual encoder's pretraining run), ``retrieval.json``
(every number, the probe queries with their own scores) and ``retrieval.png``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from geocl.errors import GeoclError
from geocl.evaluation.protocol import ALL_LABELS, Evaluation, Measurement, Subset, TestSet, register_evaluation

#: The default retrieval recipe (in the checkout geocl runs from).
DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "retrieval.yaml"
#: Cut-off of the probe metrics and of the violation and agreement shares.
PROBE_K = 3
_HITS = (1, 3, 5, 10)

METRIC_COLUMNS: tuple[str, ...] = (
    *(f"attr_hit{k}" for k in _HITS),
    "attr_mrr",
    "attr_mean_recall",
    *(f"pair_hit{k}" for k in _HITS),
    "pair_mrr",
)
EXTRA_COLUMNS: tuple[str, ...] = (
    "gallery_size",
    "queries",
    "attr_recall1",
    "attr_recall5",
    "attr_recall10",
    "random_attr_hit3",
    "random_attr_mrr",
    "random_pair_hit3",
    "random_pair_mrr",
    "relation_queries",
    "relation_hit3",
    "relation_mrr",
    "swap_agreement",
    "negation_queries",
    "negation_hit3",
    "negation_mrr",
    "negation_violation",
    "plain_violation",
)


@register_evaluation
class TextRetrieval(Evaluation):
    """Train the retrieval recipe from the encoder; text -> image hit@k and MRR on the held-out gallery.

    Args:
        options: ``RetrievalOptions`` (or a mapping / None): the retrieval recipe, a step
            budget, a batch size, overrides of that recipe and whether its training shows
            a progress bar.
        train_fn: ``train_fn(recipe) -> checkpoint path``; default: ``geocl pretrain``'s
            :func:`~geocl.training.pretrain.run_pretrain`.
    """

    name: ClassVar[str] = "retrieval"
    formats: ClassVar[tuple[str, ...]] = ("tiles", "image_folder", "cifar")
    metric_columns: ClassVar[tuple[str, ...]] = METRIC_COLUMNS
    metric_labels: ClassVar[dict[str, str]] = {
        **{f"attr_hit{k}": f"hit@{k}" for k in _HITS},
        "attr_mrr": "MRR",
        "attr_mean_recall": "mean recall",
        **{f"pair_hit{k}": f"pair hit@{k}" for k in _HITS},
        "pair_mrr": "pair MRR",
    }
    primary_metric: ClassVar[str] = "attr_mrr"
    extra_columns: ClassVar[tuple[str, ...]] = EXTRA_COLUMNS
    caption: ClassVar[str] = (
        "Text -> tile retrieval on the held-out gallery after training the retrieval recipe from each encoder: "
        "hit@k, MRR and mean recall under attribute-level relevance, and under exact-pair relevance (pair);"
    )
    title: ClassVar[str] = "Text -> tile retrieval"
    axis_label: ClassVar[str] = "MRR (attribute-level relevance)"
    folder: ClassVar[str] = "retrieval"
    result_file: ClassVar[str] = "retrieval.json"
    doing: ClassVar[str] = "retrieval training"

    def __init__(self, options: Any = None, *, train_fn: Callable[[Any], Path] | None = None) -> None:
        self.options = _plain_options(options)
        self.progress = bool(self.options.pop("progress", True))
        self.train_fn = train_fn

    @classmethod
    def from_options(cls, options: Any) -> TextRetrieval:
        """Configured by ``options.retrieval`` where the comparison's options have it."""
        return cls(getattr(options, "retrieval", None))

    def subsets(self, label_fractions: Sequence[float], subset_seeds: int | None = None) -> list[Subset]:
        """One subset: the captions of every training item (label fractions do not apply)."""
        return [ALL_LABELS]

    def run_folder(self, name: str, subset: Subset, seed: int) -> str:
        return f"{self.folder}/{name}-s{seed}"

    def labelled_data(self, recipe: Any) -> str:
        data = recipe.data
        return str(data.tiles) if data.format == "tiles" else f"{data.format}:{data.path}"

    def test_set(self, recipe: Any) -> TestSet | None:
        """The gallery of a tile set: its test split (natural images: nothing to state)."""
        if recipe.data.format != "tiles":
            return None
        from geocl.evaluation.segmentation import describe_test_split

        described = describe_test_split(Path(str(recipe.data.tiles)))
        return None if described is None else TestSet(f"retrieval gallery and queries: the {described.description}")

    def run(self, checkpoint: Path | None, *, recipe: Any, subset: Subset, seed: int, out: Path) -> Measurement:
        start = time.perf_counter()
        dual = retrieval_recipe(recipe, checkpoint, seed=seed, out=out / "train", **self.options)
        trained = self.train_fn(dual) if self.train_fn is not None else _pretrain(dual, progress=self.progress)
        data = recipe.data
        report = evaluate_retrieval(
            trained,
            data_format=str(data.format),
            data=str(data.tiles if data.format == "tiles" else data.path),
            image_size=int(data.image_size),
            val_fraction=float(data.val_fraction),
            out=out,
            seconds_before=time.perf_counter() - start,
        )
        return Measurement(
            {column: report.numbers[column] for column in METRIC_COLUMNS},
            checkpoint=str(trained),
            extra={column: report.numbers.get(column) for column in EXTRA_COLUMNS},
        )


def _plain_options(options: Any) -> dict[str, Any]:
    """``RetrievalOptions`` (a pydantic model, a mapping or None) as keyword arguments of
    :func:`retrieval_recipe`, plus ``progress``."""
    if options is None:
        return {}
    values = options.model_dump() if hasattr(options, "model_dump") else dict(options)
    known = ("recipe", "max_steps", "batch_size", "overrides", "progress")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise GeoclError(f"unknown retrieval options {', '.join(unknown)}; known: {', '.join(known)}", key="retrieval")
    return {key: value for key, value in values.items() if value is not None}


def retrieval_recipe(
    compared: Any,
    checkpoint: Path | None,
    *,
    seed: int,
    out: Path,
    recipe: str | Path | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    overrides: Sequence[str] = (),
) -> Any:
    """The retrieval recipe one row trains: the retrieval recipe's method, optimiser and trainer,
    the compared recipe's data and encoder, the image encoder initialised from ``checkpoint``.

    Args:
        compared: the recipe of the row (its data and encoder).
        checkpoint: the row's pretraining checkpoint (None: random init).
        seed: the row's seed.
        out: the run folder of the training.
        recipe: the retrieval recipe (default: :data:`DEFAULT_RECIPE`).
        max_steps: optimizer steps (overrides the recipe's epochs).
        batch_size: training batch size (default: the retrieval recipe's).
        overrides: dotted overrides of the retrieval recipe.

    Raises:
        GeoclError: no retrieval recipe, or one that does not load.
    """
    from geocl.methods import load_recipe
    from geocl.recipes import recipe_to_dict, validate_recipe

    path = Path(recipe) if recipe is not None else DEFAULT_RECIPE
    if not path.is_file():
        raise GeoclError(
            "no retrieval recipe here; give one (compare --retrieval-recipe)", path=path, key="retrieval.recipe"
        )
    data = recipe_to_dict(load_recipe(path, list(overrides)))
    if data["method"]["name"] != "retrieval":
        raise GeoclError(
            f"is a {data['method']['name']} recipe, not a retrieval one", path=path, key="retrieval.recipe"
        )
    row = recipe_to_dict(compared)
    data["name"] = f"{row['name']}-retrieval"
    data["out"] = str(out)
    data["seed"] = int(seed)
    data["data"] = {**row["data"], "split": "train", "batch_size": batch_size or data["data"]["batch_size"]}
    data["encoder"] = dict(row["encoder"])
    data["method"]["init_checkpoint"] = "" if checkpoint is None else str(checkpoint)
    if max_steps is not None:
        data["trainer"].update(max_steps=int(max_steps), max_epochs=-1)
    return validate_recipe(data, path=path)


def _pretrain(recipe: Any, *, progress: bool) -> Path:
    from geocl.training.pretrain import run_pretrain  # Lightning: only when a row runs

    return Path(run_pretrain(recipe, progress=progress).checkpoint)


def gallery_dataset(data_format: str, data: str | Path, *, image_size: int = 0, val_fraction: float = 0.2) -> Any:
    """The held-out gallery: the test split of a tile set, the val split of natural images."""
    if data_format == "tiles":
        from geocl.data.tile_dataset import TileDataset

        return TileDataset(data, "test", with_mask=None, progress=False)
    from geocl.data.natural import open_natural_dataset

    return open_natural_dataset(data_format, data, "val", image_size=image_size, val_fraction=val_fraction)


@dataclass
class RetrievalReport:
    """What :func:`evaluate_retrieval` measured.

    Attributes:
        numbers: every metric and extra column (see the module docstring).
        probes: each probe query with its kind, relevant count and first-relevant rank.
        path: the ``retrieval.json`` written.
    """

    numbers: dict[str, float]
    probes: list[dict[str, Any]]
    path: Path


def evaluate_retrieval(
    checkpoint: str | Path,
    *,
    data_format: str,
    data: str | Path,
    out: str | Path,
    image_size: int = 0,
    val_fraction: float = 0.2,
    batch_size: int = 64,
    seconds_before: float = 0.0,
) -> RetrievalReport:
    """Score a retrieval checkpoint on the held-out gallery; writes ``out/retrieval.json`` and ``out/retrieval.png``.

    Raises:
        GeoclError: a checkpoint that is not a retrieval one, an empty gallery, or a
            gallery without captions.
    """
    import numpy as np

    from geocl.io import atomic_write_text
    from geocl.retrieval.captions import CaptionConfig, dataset_captions
    from geocl.retrieval.index import embed_tiles
    from geocl.retrieval.metrics import random_ranking_expectation, ranking_metrics
    from geocl.retrieval.model import load_towers
    from geocl.retrieval.text import QueryError

    start = time.perf_counter()
    out = Path(out)
    towers = load_towers(checkpoint)
    gallery = gallery_dataset(data_format, data, image_size=image_size, val_fraction=val_fraction)
    if len(gallery) == 0:
        raise GeoclError("the held-out split has no items to search", path=data)
    captions = dataset_captions(gallery, CaptionConfig(**towers.settings.get("captions", {})))
    attributes = captions.attributes
    images = embed_tiles(towers, gallery, batch_size).numpy()

    texts, query_atoms, items = [], [], []
    for item, found in enumerate(captions.captions):
        if not found:
            continue
        try:
            towers.tokenizer.check(found[0].text)
        except QueryError:
            continue  # a user caption with a word the training captions never used
        texts.append(found[0].text)
        query_atoms.append(found[0].attributes)
        items.append(item)
    if not texts:
        raise GeoclError("no held-out item has a caption the model can read", path=data)
    scores = towers.embed_texts(texts).numpy() @ images.T
    attr_relevant = np.array([[atoms <= have for have in attributes] for atoms in query_atoms])
    pair_relevant = np.zeros_like(attr_relevant)
    pair_relevant[np.arange(len(items)), items] = True
    attr = ranking_metrics(scores, attr_relevant)
    pair = ranking_metrics(scores, pair_relevant)
    numbers: dict[str, float] = {
        **{key: value for key, value in attr.as_dict("attr_").items()},
        **{f"pair_hit{k}": value for k, value in pair.hit.items()},
        "pair_mrr": pair.mrr,
        "gallery_size": float(len(gallery)),
        "queries": float(len(texts)),
    }
    for prefix, relevant in (("random_attr_", attr_relevant), ("random_pair_", pair_relevant)):
        expected = random_ranking_expectation(relevant)
        numbers[f"{prefix}hit3"], numbers[f"{prefix}mrr"] = expected["hit3"], expected["mrr"]
    probe_numbers, probes = _probe(towers, images, attributes, captions.templated)
    numbers.update(probe_numbers)
    numbers["seconds"] = round(seconds_before + time.perf_counter() - start, 1)
    record = {
        **{key: None if math.isnan(value) else value for key, value in numbers.items()},  # strict JSON
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": "test" if data_format == "tiles" else "val",
        "probes": probes,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / TextRetrieval.result_file
    atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False))
    _plot(numbers, out / "retrieval.png")
    return RetrievalReport(numbers, probes, path)


def _probe(
    towers: Any, images: Any, attributes: list[Any], templated: bool
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The relation and negation probe set over the gallery (NaN where it has none)."""
    import numpy as np

    from geocl.retrieval.captions import class_caption, negation_caption, relation_caption
    from geocl.retrieval.metrics import first_relevant_ranks, hit_at_k, mean_reciprocal_rank, ranking

    nan = float("nan")
    numbers = {column: nan for column in EXTRA_COLUMNS if column.startswith(("relation", "swap", "negation", "plain"))}
    numbers["relation_queries"] = numbers["negation_queries"] = 0.0
    if not templated:
        return numbers, []
    known = set(towers.tokenizer.vocabulary)

    def readable(text: str) -> bool:
        return all(word in known for word in towers.tokenizer.words(text))

    def scored(captions: list[Any]) -> tuple[Any, Any]:
        scores = towers.embed_texts([caption.text for caption in captions]).numpy() @ images.T
        relevant = np.array([[caption.attributes <= have for have in attributes] for caption in captions])
        return scores, relevant

    probes: list[dict[str, Any]] = []
    relations = sorted({atom for have in attributes for atom in have if atom[0] in ("next_to", "crossing")})
    pairs = []  # (query, swapped query) of each "next to" relation
    relation_captions = []
    for atom in relations:
        first = relation_caption(atom, (atom[1], atom[2]))
        relation_captions.append(first)
        if atom[0] == "next_to":
            second = relation_caption(atom, (atom[2], atom[1]))
            relation_captions.append(second)
            pairs.append((len(relation_captions) - 2, len(relation_captions) - 1))
    relation_captions = [caption for caption in relation_captions if readable(caption.text)]
    if relation_captions and len(relation_captions) == len(relations) + len(pairs):
        scores, relevant = scored(relation_captions)
        ranks = first_relevant_ranks(scores, relevant)
        numbers.update(
            relation_queries=float(len(ranks)),
            relation_hit3=hit_at_k(ranks, PROBE_K),
            relation_mrr=mean_reciprocal_rank(ranks),
        )
        agreement = [
            len(set(ranking(scores[a])[:PROBE_K]) & set(ranking(scores[b])[:PROBE_K])) / min(PROBE_K, scores.shape[1])
            for a, b in pairs
        ]
        numbers["swap_agreement"] = float(np.mean(agreement)) if agreement else nan
        probes += [
            {"kind": "relation", "query": caption.text, "relevant": int(hits.sum()), "rank": int(rank)}
            for caption, hits, rank in zip(relation_captions, relevant, ranks, strict=True)
        ]

    classes = sorted({atom[1] for have in attributes for atom in have if atom[0] == "has"})
    negations, plains = [], []
    for present in classes:
        for absent in classes:
            with_absent = [("has", present) in have and ("without", absent) in have for have in attributes]
            with_both = [("has", present) in have and ("has", absent) in have for have in attributes]
            if present != absent and any(with_absent) and any(with_both):
                negations.append(negation_caption(present, absent))
                plains.append((class_caption(present), absent))
    negations = [caption for caption in negations if readable(caption.text)]
    if negations and len(negations) == len(plains):
        scores, relevant = scored(negations)
        plain_scores, _ = scored([plain for plain, _ in plains])
        ranks = first_relevant_ranks(scores, relevant)

        def violation(rows: Any) -> float:
            shares = []
            for row, (_, absent) in zip(rows, plains, strict=True):
                top = ranking(row)[:PROBE_K]
                shares.append(np.mean([("without", absent) not in attributes[tile] for tile in top]))
            return float(np.mean(shares))

        numbers.update(
            negation_queries=float(len(ranks)),
            negation_hit3=hit_at_k(ranks, PROBE_K),
            negation_mrr=mean_reciprocal_rank(ranks),
            negation_violation=violation(scores),
            plain_violation=violation(plain_scores),
        )
        probes += [
            {"kind": "negation", "query": caption.text, "relevant": int(hits.sum()), "rank": int(rank)}
            for caption, hits, rank in zip(negations, relevant, ranks, strict=True)
        ]
    return numbers, probes


def _plot(numbers: dict[str, float], final: Path) -> None:
    """Bars of hit@k and MRR under both relevance definitions, with what a random ranking scores."""
    from matplotlib.figure import Figure

    from geocl.io import save_figure

    figure = Figure(figsize=(7.5, 3.6))
    axes = figure.subplots()
    names = [*(f"hit@{k}" for k in _HITS), "MRR"]
    series = {
        "attribute-level": [*(numbers[f"attr_hit{k}"] for k in _HITS), numbers["attr_mrr"]],
        "exact pair": [*(numbers[f"pair_hit{k}"] for k in _HITS), numbers["pair_mrr"]],
    }
    width = 0.38
    for offset, (label, values) in zip((-width / 2, width / 2), series.items(), strict=True):
        axes.bar([position + offset for position in range(len(names))], values, width, label=label)
    chance_lines: tuple[tuple[str, Literal["--", ":"], str], ...] = (
        ("random_attr_", "--", "random ranking, attribute-level"),
        ("random_pair_", ":", "random ranking, exact pair"),
    )
    for prefix, style, line_label in chance_lines:
        legend = line_label
        for position, key in ((1, "hit3"), (4, "mrr")):
            value = numbers.get(f"{prefix}{key}", math.nan)
            if math.isfinite(value):
                axes.hlines(value, position - 0.45, position + 0.45, colors="black", linestyles=style, label=legend)
                legend = ""  # one legend entry a line style (hlines' default label: none)
    axes.set_xticks(range(len(names)), names)
    axes.set_ylim(0, 1)
    axes.set_ylabel("score")
    axes.set_title(
        f"text -> tile retrieval: {int(numbers['queries'])} queries, gallery of {int(numbers['gallery_size'])}",
        fontsize=9,
    )
    axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, final)
