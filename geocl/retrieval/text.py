"""The text side of retrieval: a word tokenizer over the captions' vocabulary and a small text encoder.

Nothing is downloaded and no pretrained language model is used: the vocabulary is the
words of the training captions (plus the words of the caption grammar), and the encoder
is trained from scratch with the image side. That replaces the DistilBERT that
Dental CLAIRES (arXiv 2306.15651) is reported to use: a template caption has a few dozen distinct words, which a pretrained 66 M
parameter model would not make more informative, and a user's query must be refused
with a clear message when it uses a word the model never saw (it could only be
guessed at).

:class:`WordTokenizer`: words by :func:`split_words` (Unicode: ``forêt``, ``水``, ``🌲`` are
words; see there), compared by :func:`fold` (NFKC and case folding), synonyms replaced
(``river`` -> ``water``, see :data:`~geocl.retrieval.captions.DEFAULT_SYNONYMS`), filler
words dropped (:data:`STOPWORDS`: "a", "the", "tiles", "show me", ...), then ids (0 is
padding). The vocabulary is built from the captions by the same reading that queries
get, so a word of a caption is always a word a query can use, and a query word the
vocabulary lacks is refused, named as it was typed. :class:`TextEncoder`: word + position embeddings -> a small pre-norm
Transformer encoder (``layers`` blocks; 0 = a bag of words, without positions) -> final LayerNorm -> mean
over the words (padding masked) -> ``[B, width]``. Mean pooling instead of a [CLS]
token (what CLIP recipes built on DistilBERT take): with a few short captions and no pretraining, the mean is the
stabler summary; the padding mask makes a caption's embedding independent of the
other captions of its batch.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geocl.errors import GeoclError

#: Words a query may contain that carry no meaning for tile retrieval.
STOPWORDS: frozenset[str] = frozenset(
    {
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "is",
        "are",
        "there",
        "some",
        "show",
        "me",
        "find",
        "tile",
        "tiles",
        "image",
        "images",
        "area",
        "areas",
        "scene",
        "scenes",
        "photo",
        "photos",
        "picture",
        "pictures",
        "place",
        "places",
        "region",
        "regions",
        "please",
        "where",
        "that",
        "which",
        "containing",
        "contains",
        "has",
        "have",
    }
)
#: Longest query accepted, in characters.
MAX_QUERY_CHARS = 500
#: Padding id.
PAD = 0

#: Joins the characters around it into one word (emoji sequences such as 👨‍👩‍👧).
_ZERO_WIDTH_JOINER = "\u200d"


def _kind(char: str) -> str:
    """``word`` (letters, digits), ``symbol`` (emoji, ``+``, ``¥``), ``mark`` (joins the run before it) or ``gap``."""
    category = unicodedata.category(char)
    if category[0] in "LN":
        return "word"
    if category[0] == "S":
        return "symbol"
    if category[0] == "M" or char == _ZERO_WIDTH_JOINER:
        return "mark"
    return "gap"  # spaces, punctuation (``_`` and ``-`` too), control and other format characters


def split_words(text: str) -> list[str]:
    """The words of a text, exactly as written (no case change, no normalisation).

    A word is a run of letters and digits of any script (``forêt``, ``水``, ``2nd``) or a
    run of symbols (``🌲``, ``+``, ``¥``); combining marks, variation selectors and zero
    width joiners stay with the run before them (``fore`` + U+0302 + ``t``, ``❤️``,
    ``👨‍👩‍👧``). Everything else separates words: spaces, punctuation (so ``bare_soil``
    and ``bare-soil`` are ``bare``, ``soil``), control characters. A symbol is a word
    rather than a separator so that a query holding one is refused as holding a word the
    model never saw, not silently read without it.
    """
    found: list[str] = []
    run: list[str] = []
    run_kind = "gap"
    for char in text:
        kind = _kind(char)
        if kind == "mark":
            if run:
                run.append(char)
                continue
            kind = "word" if char != _ZERO_WIDTH_JOINER else "gap"
        if kind != run_kind and run:
            found.append("".join(run))
            run = []
        if kind != "gap":
            run.append(char)
        run_kind = kind
    if run:
        found.append("".join(run))
    return [word.rstrip(_ZERO_WIDTH_JOINER) for word in found]


def fold(word: str) -> str:
    """The form words are compared in: NFKC, case-folded (``Forêt`` and ``FORÊT`` -> ``forêt``,
    ``Straße`` -> ``strasse``, full-width ``ｆｏｒｅｓｔ`` -> ``forest``), NFKC again."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", word).casefold())


def _folded_words(text: str) -> str:
    return " ".join(fold(word) for word in split_words(str(text)))


class QueryError(GeoclError):
    """A query the model cannot read (empty, too long, unknown words); key ``query``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, key="query")
        self.message = message


class WordTokenizer:
    """Words to ids over a fixed vocabulary.

    Args:
        vocabulary: the known words (id = position + 1; 0 is padding).
        synonyms: word -> replacement word(s), applied before the lookup.
        max_tokens: most words a text may have (after synonyms and stop words).
        stopwords: words dropped.
    """

    def __init__(
        self,
        vocabulary: Sequence[str] = (),
        *,
        synonyms: Mapping[str, str] | None = None,
        max_tokens: int = 48,
        stopwords: Iterable[str] = STOPWORDS,
    ) -> None:
        self.vocabulary = list(vocabulary)
        self.ids = {word: position + 1 for position, word in enumerate(self.vocabulary)}
        self.synonyms = {fold(str(key)): _folded_words(value) for key, value in (synonyms or {}).items()}
        self.max_tokens = max_tokens
        self.stopwords = frozenset(fold(str(word)) for word in stopwords)

    def __len__(self) -> int:
        """Ids in use, padding included."""
        return len(self.vocabulary) + 1

    def read(self, text: str) -> list[tuple[str, str]]:
        """``(word as written, word as the vocabulary spells it)`` for each word of a text.

        Words are split by :func:`split_words` and compared by :func:`fold`; synonyms are
        replaced (one written word may give several) and stop words dropped. Captions
        (building the vocabulary) and queries are read by this one method.
        """
        found: list[tuple[str, str]] = []
        for written in split_words(text):
            word = fold(written)
            for part in self.synonyms.get(word, word).split():
                if part not in self.stopwords:
                    found.append((written, part))
        return found

    def words(self, text: str) -> list[str]:
        """The words of a text as the vocabulary spells them (synonyms replaced, stop words dropped)."""
        return [part for _, part in self.read(text)]

    @classmethod
    def fit(
        cls, texts: Iterable[str], *, capacity: int, synonyms: Mapping[str, str] | None = None, max_tokens: int = 48
    ) -> WordTokenizer:
        """The tokenizer whose vocabulary is every word of ``texts`` (sorted, so it is the same for the same texts).

        Raises:
            GeoclError: more words than ``capacity - 1`` (key ``method.vocab_capacity``) or
                a text longer than ``max_tokens`` words (key ``method.max_tokens``).
        """
        reader = cls((), synonyms=synonyms, max_tokens=max_tokens)
        vocabulary: set[str] = set()
        for text in texts:
            found = reader.words(text)
            if len(found) > max_tokens:
                raise GeoclError(
                    f"a caption has {len(found)} words, more than {max_tokens}: {text[:80]!r}", key="method.max_tokens"
                )
            vocabulary.update(found)
        if len(vocabulary) + 1 > capacity:
            raise GeoclError(
                f"the captions use {len(vocabulary)} distinct words; raise it to at least {len(vocabulary) + 1}",
                key="method.vocab_capacity",
            )
        return cls(sorted(vocabulary), synonyms=synonyms, max_tokens=max_tokens)

    def check(self, text: str) -> list[int]:
        """The ids of a query, or a :class:`QueryError` that says what is wrong with it.

        Raises:
            QueryError: an empty query, one longer than :data:`MAX_QUERY_CHARS` characters
                or ``max_tokens`` words, one of filler words only, or one with words the
                model does not know (named, with known words to use instead).
        """
        if not isinstance(text, str) or not text.strip():
            raise QueryError("the query is empty; type what the tiles should show, e.g. " + self.example())
        if len(text) > MAX_QUERY_CHARS:
            raise QueryError(f"the query is {len(text)} characters long; keep it under {MAX_QUERY_CHARS}")
        found = self.read(text)
        if not found:
            raise QueryError("the query has no words that describe tiles; try e.g. " + self.example())
        if len(found) > self.max_tokens:
            raise QueryError(f"the query has {len(found)} words; keep it to at most {self.max_tokens}")
        unknown = list(dict.fromkeys(written for written, word in found if word not in self.ids))
        if unknown:
            # as typed, not repr(): an emoji sequence's joiners must not turn into escapes
            shown = ", ".join(f"'{word}'" for word in unknown[:5]) + (
                f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
            )
            plural = "s" if len(unknown) > 1 else ""
            raise QueryError(
                f"unknown word{plural} {shown}: the model knows {len(self.vocabulary)} words "
                f"({', '.join(self.vocabulary[:24])}{', ...' if len(self.vocabulary) > 24 else ''})"
            )
        return [self.ids[word] for _, word in found]

    def example(self) -> str:
        """A query made of known words, for messages."""
        known = [word for word in ("forest", "next", "to", "water") if word in self.ids]
        if len(known) == 4:
            return "'forest next to water'"
        return repr(" ".join(self.vocabulary[:2])) if self.vocabulary else "'forest'"

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Ids and mask of a batch of texts (every word must be known).

        Returns:
            (ids long ``[B, L]``, mask bool ``[B, L]``), L = the longest text's word count,
            padded with :data:`PAD`.

        Raises:
            QueryError: for a text :meth:`check` refuses.
        """
        rows = [self.check(text) for text in texts]
        length = max(len(row) for row in rows) if rows else 1
        ids = torch.full((len(rows), length), PAD, dtype=torch.long)
        for position, row in enumerate(rows):
            ids[position, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, ids != PAD

    def state(self) -> dict[str, Any]:
        """Plain data that :meth:`from_state` reads back (stored in checkpoints and indexes)."""
        return {
            "vocabulary": list(self.vocabulary),
            "synonyms": dict(self.synonyms),
            "max_tokens": self.max_tokens,
            "stopwords": sorted(self.stopwords),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> WordTokenizer:
        """The tokenizer :meth:`state` describes."""
        return cls(
            state["vocabulary"],
            synonyms=state.get("synonyms"),
            max_tokens=int(state["max_tokens"]),
            stopwords=state.get("stopwords", STOPWORDS),
        )


class TextEncoder(nn.Module):
    """A small Transformer encoder over word ids, trained from scratch.

    Args:
        vocab_capacity: rows of the word embedding (ids ``0 .. capacity-1``; 0 = padding).
        width: embedding and model width.
        layers: Transformer blocks (0: mean of the word embeddings, a bag of words).
        heads: attention heads (must divide ``width``).
        max_tokens: longest text, words (rows of the position embedding).
        dropout: dropout inside the blocks.

    Shape:
        - ids: ``[B, L]`` long, L <= max_tokens.
        - mask: ``[B, L]`` bool, True for words (at least one per row).
        - Output: ``[B, width]``.
    """

    def __init__(
        self,
        vocab_capacity: int,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        max_tokens: int = 48,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if width % heads:
            raise GeoclError(f"{heads} heads do not divide the text width {width}", key="method.text_heads")
        self.width = width
        self.words = nn.Embedding(vocab_capacity, width, padding_idx=PAD)
        # a bag of words has no word order to encode
        self.positions = nn.Embedding(max_tokens, width) if layers else None
        block = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=2 * width,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # no nested-tensor fast path: its results would depend on the padding of the batch
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False) if layers else None
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.words.weight, std=0.02)
        if self.positions is not None:
            nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.words.weight[PAD].zero_()

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        hidden = self.words(ids)
        if self.blocks is not None and self.positions is not None:
            hidden = hidden + self.positions(torch.arange(ids.shape[1], device=ids.device))[None]
            hidden = self.blocks(hidden, src_key_padding_mask=~mask)
        hidden = self.norm(hidden)
        weights = mask.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
