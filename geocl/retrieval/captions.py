"""Captions of tiles and images, each with its canonical attribute set, so that relevance is exact.

A labelled tile gets deterministic template captions from its class mask, as Dental
CLAIRES (Kabir et al., arXiv 2306.15651) builds its captions from structured record
fields; here the fields are the tile's classes and their relations. The attributes (atoms) of a tile, with ``share`` a
class's share of the tile's labelled pixels:

* ``("has", A)``: share of A >= ``min_share``;
* ``("mostly", A)``: share of A > ``mostly_share``;
* ``("next_to", A, B)`` (A, B sorted by name: "A next to B" = "B next to A"): both
  present, and A's mask dilated by ``touch_px`` px (a square of side ``2 touch_px + 1``)
  touches B, i.e. some pixel of B lies within ``touch_px`` px of A (Chebyshev distance;
  a gap of at most ``touch_px - 1`` px of another class between them);
* ``("crossing", L, B)``: L one of ``linear_classes`` and both present, and L cuts B into
  pieces: at least two 4-connected components of the pixels that are not L hold a
  piece of B of at least ``min_share`` of the tile each (a road through a forest, a
  river through farmland; a road ending inside the forest, or clipping a corner, does not);
* ``("without", B)``: no pixel of B in the tile.

Captions put atoms into words: the full caption of a tile names its present classes by
share (at most ``max_classes``, "mostly A" when one dominates) and the relations among
them, e.g. ``"mostly forest with roads and water, roads crossing forest, forest next to
water"``; the partial captions say one thing each (``"forest"``, ``"mostly forest"``,
``"forest next to water"``, ``"roads crossing forest"``, and, with ``negation``,
``"forest without buildings"``). A caption's attribute set is exactly what its words
say (``"forest next to water"`` is ``{has forest, has water, next_to(forest, water)}``), so
two captions are equivalent when their sets are equal, and a tile is relevant to a
caption when the tile's attributes include the caption's. Training draws one of a
tile's captions per step; evaluation queries with the full captions and probes.

Class names come from ``class_names`` (in the order of the tile set's classes), else the
scene's ``scene.json`` (the embedded synthetic scene writes one), else ``class <value>``.

User captions (``csv``: rows ``tile path, caption``; a first row ``path,caption`` is a
header; several rows may caption one tile) replace the templates. A user caption's
attributes are its normalised words (no canonical set is known for free text, so
captions are equivalent when they read the same after normalisation).

Natural images (image folders, CIFAR) are captioned with their class name; their
attribute set is ``{("has", name)}``.

CLAIRES gives no caption template (its abstract only names the record fields used), so
the readings taken, as said above: relations are symmetric ("next to") or directed from
the linear class ("crossing"); "mostly" above 60 %; the templates, thresholds and linear
classes are recipe parameters. The synthetic scene has one ``water`` class for rivers, lakes and ponds, so
"river" is read as water (see :data:`DEFAULT_SYNONYMS`, applied to queries by the
tokenizer) and ``water`` is a linear class by default: a river cuts what it crosses, a
lake does not.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage

from geocl.errors import GeoclError
from geocl.retrieval.text import fold, split_words

Atom = tuple[str, ...]
Attributes = frozenset[Atom]

#: Words a query may use for the words of the synthetic scene's captions (applied by
#: the tokenizer to captions and queries alike; a value may be several words).
DEFAULT_SYNONYMS: dict[str, str] = {
    "river": "water",
    "rivers": "water",
    "lake": "water",
    "lakes": "water",
    "pond": "water",
    "ponds": "water",
    "stream": "water",
    "farmland": "cropland",
    "farmlands": "cropland",
    "field": "cropland",
    "fields": "cropland",
    "crops": "cropland",
    "cropfields": "cropland",
    "agriculture": "cropland",
    "road": "roads",
    "street": "roads",
    "streets": "roads",
    "track": "roads",
    "tracks": "roads",
    "building": "buildings",
    "houses": "buildings",
    "house": "buildings",
    "town": "buildings",
    "village": "buildings",
    "settlement": "buildings",
    "forests": "forest",
    "woods": "forest",
    "wood": "forest",
    "trees": "forest",
    "woodland": "forest",
    "grass": "grassland",
    "meadow": "grassland",
    "meadows": "grassland",
    "pasture": "grassland",
    "beside": "next to",
    "near": "next to",
    "along": "next to",
    "bordering": "next to",
    "adjacent": "next to",
    "crosses": "crossing",
    "across": "crossing",
    "through": "crossing",
    "cutting": "crossing",
    "no": "without",
}


class CaptionConfig(BaseModel):
    """Parameters of the ``captions`` section of the retrieval method (``method.captions``).

    Attributes:
        csv: user captions, a CSV of ``tile path, caption`` rows ("" = template captions
            from the masks).
        class_names: names of the tile set's classes, in the order of its ``tiles.json``
            ``classes`` (ascending mask values); [] = the scene's ``scene.json``, else
            ``class <value>``.
        min_share: smallest share of a tile's labelled pixels for a class to be present.
        mostly_share: share above which a class is "mostly" the tile (default 60 %).
        touch_px: dilation radius of "next to", px (B within this distance of A).
        linear_classes: class names that can be "crossing" another class.
        max_classes: present classes named in a full caption (by share).
        negation: also caption tiles with "A without B" (B absent); needed for the
            negation probe queries to be words the model knows.
        synonyms: query word -> caption word(s), applied to captions and queries.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    csv: str = ""
    class_names: list[str] = []
    min_share: float = Field(default=0.05, gt=0.0, le=1.0)
    mostly_share: float = Field(default=0.6, ge=0.5, lt=1.0)
    touch_px: int = Field(default=2, ge=1)
    linear_classes: list[str] = ["roads", "water"]
    max_classes: int = Field(default=3, ge=1)
    negation: bool = True
    synonyms: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SYNONYMS))


@dataclass(frozen=True)
class Caption:
    """One caption and the attributes its words say."""

    text: str
    attributes: Attributes


@dataclass
class CaptionSet:
    """The captions of every item of a dataset.

    Attributes:
        captions: per item, its captions (the full one first); empty for an item
            without a caption (user captions that skip a tile).
        attributes: per item, its attributes (what relevance is checked against).
        class_names: the class names used.
        templated: whether the captions are template captions from masks (their
            relations and negations make the probe set).
    """

    captions: list[list[Caption]]
    attributes: list[Attributes]
    class_names: list[str] = field(default_factory=list)
    templated: bool = False

    def texts(self) -> list[str]:
        """Every caption text (for the vocabulary)."""
        return [caption.text for captions in self.captions for caption in captions]

    def groups(self) -> dict[Attributes, int]:
        """Equivalence class id of each distinct attribute set (in first-seen order)."""
        ids: dict[Attributes, int] = {}
        for captions in self.captions:
            for caption in captions:
                ids.setdefault(caption.attributes, len(ids))
        return ids


def words(name: str) -> str:
    """A class name as caption words (``bare_soil`` -> ``bare soil``)."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


def _listed(names: Sequence[str]) -> str:
    names = [words(name) for name in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def mask_attributes(
    mask: np.ndarray, class_names: Sequence[str], config: CaptionConfig
) -> tuple[Attributes, list[str]]:
    """The attributes of one tile from its class mask.

    Args:
        mask: ``[H, W]`` class indices (positions in ``class_names``); negative values
            (the ignore index) are unlabelled.
        class_names: name of each class index.
        config: thresholds.

    Returns:
        (attributes, present class names by decreasing share, ties by name).
    """
    mask = np.asarray(mask)
    valid = (mask >= 0) & (mask < len(class_names))
    total = int(valid.sum())
    atoms: set[Atom] = set()
    if total == 0:
        return frozenset(atoms), []
    counts = np.bincount(mask[valid].astype(np.int64), minlength=len(class_names))
    shares = counts / total
    present = sorted(
        (index for index in range(len(class_names)) if shares[index] >= config.min_share),
        key=lambda index: (-shares[index], class_names[index]),
    )
    for index, count in enumerate(counts):
        if count == 0:
            atoms.add(("without", class_names[index]))
    for index in present:
        atoms.add(("has", class_names[index]))
        if shares[index] > config.mostly_share:
            atoms.add(("mostly", class_names[index]))
    square = np.ones((3, 3), dtype=bool)
    grown = {
        index: ndimage.binary_dilation(mask == index, structure=square, iterations=config.touch_px) for index in present
    }
    for position, a in enumerate(present):
        for b in present[position + 1 :]:
            if (grown[a] & (mask == b)).any():
                atoms.add(("next_to", *sorted((class_names[a], class_names[b]))))
    linear = set(config.linear_classes)
    min_piece = config.min_share * total
    for line in present:
        if class_names[line] not in linear:
            continue
        pieces, count = ndimage.label(valid & (mask != line))  # 4-connected: a thin diagonal line cuts
        for other in present:
            if other == line:
                continue
            sizes = np.bincount(pieces[mask == other], minlength=count + 1)[1:]
            if int((sizes >= min_piece).sum()) >= 2:
                atoms.add(("crossing", class_names[line], class_names[other]))
    return frozenset(atoms), [class_names[index] for index in present]


def relation_text(atom: Atom, order: Sequence[str] = ()) -> str:
    """Words of a relation atom; a "next to" pair is written in ``order`` (default: by name)."""
    if atom[0] == "crossing":
        return f"{words(atom[1])} crossing {words(atom[2])}"
    first, second = atom[1], atom[2]
    if order and first in order and second in order and order.index(second) < order.index(first):
        first, second = second, first
    return f"{words(first)} next to {words(second)}"


def relation_caption(atom: Atom, order: Sequence[str] = ()) -> Caption:
    """A relation as a caption: its words, and the atom with the presence of both classes."""
    return Caption(relation_text(atom, order), frozenset({atom, ("has", atom[1]), ("has", atom[2])}))


def negation_caption(present: str, absent: str) -> Caption:
    """``"A without B"``: ``{has A, without B}``."""
    return Caption(f"{words(present)} without {words(absent)}", frozenset({("has", present), ("without", absent)}))


def class_caption(name: str, mostly: bool = False) -> Caption:
    """``"A"`` or ``"mostly A"``."""
    atoms = {("has", name), ("mostly", name)} if mostly else {("has", name)}
    return Caption(f"mostly {words(name)}" if mostly else words(name), frozenset(atoms))


def template_captions(attributes: Attributes, present: Sequence[str], config: CaptionConfig) -> list[Caption]:
    """A tile's captions: the full one first, then one a statement.

    Args:
        attributes: from :func:`mask_attributes`.
        present: present class names by decreasing share.
        config: ``max_classes`` and ``negation``.
    """
    if not present:
        return []
    named = list(present[: config.max_classes])
    lead = named[0]
    mostly = ("mostly", lead) in attributes
    relations = sorted(
        (atom for atom in attributes if atom[0] in ("next_to", "crossing") and set(atom[1:]) <= set(named)),
        key=lambda atom: (atom[0] != "crossing", named.index(atom[1]) + named.index(atom[2]), atom),
    )
    text = ("mostly " if mostly else "") + words(lead)
    if len(named) > 1:
        text += " with " + _listed(named[1:])
    text += "".join(", " + relation_text(atom, named) for atom in relations)
    full_atoms: set[Atom] = {("has", name) for name in named} | set(relations)
    if mostly:
        full_atoms.add(("mostly", lead))
    captions = [Caption(text, frozenset(full_atoms))]
    captions += [class_caption(name) for name in named]
    if mostly:
        captions.append(class_caption(lead, mostly=True))
    captions += [relation_caption(atom, named) for atom in relations]
    if config.negation:
        absent = sorted(atom[1] for atom in attributes if atom[0] == "without")
        captions += [negation_caption(lead, name) for name in absent]
    unique: dict[str, Caption] = {}
    for caption in captions:
        unique.setdefault(caption.text, caption)
    return list(unique.values())


def scene_class_names(tiles: str | os.PathLike[str], metadata: dict[str, Any]) -> list[str]:
    """Names of a tile set's classes (in its ``classes`` order) from its scene's ``scene.json``, else ``class <value>``."""
    values = [int(value) for value in metadata.get("classes", [])]
    for scene in (metadata.get("sources") or {}).get("scene", []):
        sidecar = Path(scene).with_name("scene.json")
        try:
            names = json.loads(sidecar.read_text(encoding="utf-8")).get("class_names")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(names, list) and all(0 <= value < len(names) for value in values):
            return [str(names[value]) for value in values]
    return [f"class {value}" for value in values]


def class_names_for(tiles: str | os.PathLike[str], metadata: dict[str, Any], config: CaptionConfig) -> list[str]:
    """The class names of a tile set: ``config.class_names`` or :func:`scene_class_names`.

    Raises:
        GeoclError: ``class_names`` given with another count than the tile set's classes.
    """
    values = list(metadata.get("classes", []))
    if config.class_names:
        if len(config.class_names) != len(values):
            raise GeoclError(
                f"gives {len(config.class_names)} names, but the tile set {tiles} has {len(values)} classes "
                f"(mask values {', '.join(map(str, values))})",
                key="method.captions.class_names",
            )
        return [str(name) for name in config.class_names]
    return scene_class_names(tiles, metadata)


def normalised_text(text: str) -> str:
    """The words of a text as the tokenizer reads them (:func:`~geocl.retrieval.text.split_words`,
    :func:`~geocl.retrieval.text.fold`), one space apart: what makes two user captions equivalent."""
    return " ".join(fold(word) for word in split_words(text))


def read_caption_csv(
    path: str | os.PathLike[str], tile_paths: Sequence[str], root: str | os.PathLike[str]
) -> list[list[Caption]]:
    """User captions of the tiles, from a CSV of ``tile path, caption`` rows.

    A tile path may be as in the tile index (``images/r0000_c0000.tif``), absolute, or
    the file name alone. A first row ``path,caption`` is a header.

    Args:
        path: the CSV.
        tile_paths: each item's path as in the tile index.
        root: the tile set folder.

    Returns:
        Per item, its captions (attributes ``{("text", normalised words)}``).

    Raises:
        GeoclError: naming the CSV for an unreadable file, a row without a caption, a
            path that names no tile, or no captioned tile at all.
    """
    path = Path(path)
    root = Path(root)
    by_key: dict[str, int] = {}
    for position, relative in enumerate(tile_paths):
        for key in (relative, str((root / relative).resolve()), Path(relative).name):
            by_key.setdefault(key, position)
    captions: list[list[Caption]] = [[] for _ in tile_paths]
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise GeoclError(f"cannot read the captions: {error}", path=path) from None
    for line, row in enumerate(rows, start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if line == 1 and len(row) >= 2 and row[1].strip().lower() == "caption":
            continue
        if len(row) < 2 or not row[1].strip():
            raise GeoclError(f"line {line}: expected 'tile path, caption'", path=path)
        name, text = row[0].strip(), ",".join(row[1:]).strip()
        key = name if name in by_key else str(Path(name).resolve()) if Path(name).is_absolute() else Path(name).name
        if key not in by_key:
            raise GeoclError(f"line {line}: {name!r} is no tile of {root}", path=path)
        normal = normalised_text(text)
        if not normal:
            raise GeoclError(f"line {line}: the caption has no words", path=path)
        captions[by_key[key]].append(Caption(normal, frozenset({("text", normal)})))
    if not any(captions):
        raise GeoclError(f"captions none of the tiles of {root}", path=path)
    return captions


def dataset_captions(dataset: Any, config: CaptionConfig) -> CaptionSet:
    """The captions of every item of a training or gallery dataset.

    Args:
        dataset: a :class:`~geocl.data.tile_dataset.TileDataset` (template captions from
            its masks, or ``config.csv``) or a natural-image dataset (class names).
        config: the caption parameters.

    Raises:
        GeoclError: a tile set without masks and no ``csv``; user captions for natural images.
    """
    from geocl.data.tile_dataset import TileDataset

    if not isinstance(dataset, TileDataset):
        if config.csv:
            raise GeoclError(
                "user captions are for tile sets; natural images are captioned by class", key="method.captions.csv"
            )
        names = [str(name) for name in dataset.classes]
        labels = [int(label) for label in np.asarray(dataset.labels)]
        captions = [[class_caption(names[label])] for label in labels]
        return CaptionSet(captions, [caption[0].attributes for caption in captions], names)
    tile_paths = [str(dataset.index["path"].iloc[int(row)]) for row in dataset.rows]
    if config.csv:
        captions = read_caption_csv(config.csv, tile_paths, dataset.root)
        attributes = [frozenset(atom for caption in item for atom in caption.attributes) for item in captions]
        return CaptionSet(captions, attributes, [])
    names = class_names_for(dataset.root, dataset.metadata, config)
    labelled = dataset if dataset.with_mask else _with_masks(dataset)
    captions, attributes = [], []
    for item in range(len(labelled)):
        mask = labelled[item]["mask"].numpy()
        atoms, present = mask_attributes(mask, names, config)
        attributes.append(atoms)
        captions.append(template_captions(atoms, present, config))
    return CaptionSet(captions, attributes, names, templated=True)


def _with_masks(dataset: Any) -> Any:
    """The same tiles as ``dataset`` (a TileDataset opened without masks), with masks.

    Raises:
        GeoclError: the tile set has no masks (naming ``method.captions.csv`` as the way out).
    """
    if not dataset.has_masks:
        raise GeoclError(
            "tile set has no masks to caption the tiles from; tile it with --mask or give method.captions.csv",
            path=dataset.root,
        )
    return dataset.with_masks()


#: The words templates join class names with.
TEMPLATE_WORDS = "mostly with and next to crossing without"


def grammar_texts(class_names: Sequence[str]) -> list[str]:
    """Texts holding every word a template caption of these classes can use (for the vocabulary).

    So that a query the templates could have produced is always readable, whether or
    not the training tiles happened to need all of it.
    """
    return [TEMPLATE_WORDS, *(words(name) for name in class_names)]
