"""The word tokenizer (synonyms, filler words, clear refusals) and the text encoder (independent of its batch)."""

from __future__ import annotations

import pytest
import torch

from geocl.errors import GeoclError
from geocl.retrieval.captions import DEFAULT_SYNONYMS
from geocl.retrieval.text import MAX_QUERY_CHARS, PAD, QueryError, TextEncoder, WordTokenizer

CAPTIONS = ["mostly forest with water, forest next to water", "cropland", "roads crossing cropland", "bare_soil"]


def _tokenizer() -> WordTokenizer:
    return WordTokenizer.fit(CAPTIONS, capacity=64, synonyms=DEFAULT_SYNONYMS, max_tokens=12)


def test_vocabulary_is_the_sorted_words_of_the_captions() -> None:
    tokenizer = _tokenizer()
    assert tokenizer.vocabulary == sorted(
        {"mostly", "forest", "with", "water", "next", "to", "cropland", "roads", "crossing", "bare", "soil"}
    )
    assert len(tokenizer) == len(tokenizer.vocabulary) + 1  # and the padding id


def test_queries_read_synonyms_and_drop_filler_words() -> None:
    tokenizer = _tokenizer()
    assert tokenizer.words("Show me tiles with a River beside the FARMLAND!") == [
        "with",
        "water",
        "next",
        "to",
        "cropland",
    ]
    assert tokenizer.check("river next to farmland") == tokenizer.check("water next to cropland")
    assert tokenizer.words("bare_soil") == ["bare", "soil"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "the query is empty"),
        ("   ", "the query is empty"),
        ("x" * (MAX_QUERY_CHARS + 1), "characters long"),
        ("the tiles", "no words that describe tiles"),
        ("forest " * 13, "at most 12"),
        ("volcano next to glacier", "unknown words 'volcano', 'glacier'"),
    ],
)
def test_queries_it_cannot_read_get_a_clear_message(query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message) as error:
        _tokenizer().check(query)
    assert error.value.key == "query" and isinstance(error.value, GeoclError)
    assert "\n" not in error.value.message


def test_unknown_words_message_lists_words_to_use() -> None:
    with pytest.raises(QueryError) as error:
        _tokenizer().check("forest next to volcano")
    assert "unknown word 'volcano'" in error.value.message and "cropland" in error.value.message


def test_too_many_words_or_captions_name_their_recipe_key() -> None:
    with pytest.raises(GeoclError, match="method.vocab_capacity"):
        WordTokenizer.fit(CAPTIONS, capacity=5)
    with pytest.raises(GeoclError, match="method.max_tokens"):
        WordTokenizer.fit(CAPTIONS, capacity=64, max_tokens=3)


def test_encode_pads_and_state_round_trips() -> None:
    tokenizer = _tokenizer()
    ids, mask = tokenizer.encode(["forest", "roads crossing cropland"])
    assert ids.shape == (2, 3) and mask.tolist() == [[True, False, False], [True, True, True]]
    assert int(ids[0, 1]) == PAD
    again = WordTokenizer.from_state(tokenizer.state())
    assert torch.equal(again.encode(["river next to farmland"])[0], tokenizer.encode(["water next to cropland"])[0])


@pytest.mark.parametrize("layers", [0, 2])
def test_a_caption_embeds_the_same_alone_or_padded_in_a_batch(layers: int) -> None:
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    encoder = TextEncoder(64, width=16, layers=layers, heads=2, max_tokens=12).eval()
    alone = encoder(*tokenizer.encode(["forest"]))
    batch = encoder(*tokenizer.encode(["forest", "mostly forest with water, forest next to water"]))
    torch.testing.assert_close(batch[0], alone[0], atol=1e-6, rtol=1e-5)
    assert batch.shape == (2, 16) and not torch.allclose(batch[0], batch[1])


def test_word_order_reaches_the_transformer_but_not_the_bag_of_words() -> None:
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    texts = ["forest next to water", "water next to forest"]
    bag = TextEncoder(64, width=16, layers=0, heads=2, max_tokens=12).eval()(*tokenizer.encode(texts))
    torch.testing.assert_close(bag[0], bag[1])
    ordered = TextEncoder(64, width=16, layers=1, heads=2, max_tokens=12).eval()(*tokenizer.encode(texts))
    assert not torch.allclose(ordered[0], ordered[1])


def test_heads_must_divide_the_width() -> None:
    with pytest.raises(GeoclError, match="method.text_heads"):
        TextEncoder(10, width=10, heads=3)


def test_unicode_words_are_words_and_unknown_ones_are_named_as_typed() -> None:
    tokenizer = _tokenizer()  # an English vocabulary
    with pytest.raises(QueryError) as error:
        tokenizer.check("forêt")
    assert "unknown word 'forêt':" in error.value.message  # not 'for', 't'
    with pytest.raises(QueryError) as error:
        tokenizer.check("水 🌲 water")  # known 'water' does not carry the others through
    assert "unknown words '水', '🌲':" in error.value.message
    with pytest.raises(QueryError) as error:
        tokenizer.check("Forest NEAR Volcán +")
    assert "unknown words 'Volcán', '+':" in error.value.message  # as typed; 'near' reads as "next to"


def test_the_vocabulary_is_built_by_the_reading_queries_get() -> None:
    captions = ["Forêt près de l'eau", "mostly forest 🌲", "👨‍👩‍👧 ❤️ roads", "Straße", "ｆｉｅｌｄ"]
    tokenizer = WordTokenizer.fit(captions, capacity=64, synonyms=DEFAULT_SYNONYMS, max_tokens=12)
    assert {"forêt", "près", "🌲", "👨‍👩‍👧", "❤️", "strasse"} <= set(tokenizer.vocabulary)
    for caption in captions:  # every caption reads back word for word
        assert tokenizer.words(caption) and tokenizer.check(caption)
    # case, composition and width do not matter; the words are the same words
    assert tokenizer.check("FORÊT") == tokenizer.check("fore\u0302t") == tokenizer.check("forêt")
    assert tokenizer.check("STRASSE") == tokenizer.check("straße")
    assert tokenizer.check("ｆｉｅｌｄ") == tokenizer.check("farmland") == tokenizer.check("cropland")
    assert WordTokenizer.from_state(tokenizer.state()).check("🌲 Forêt") == tokenizer.check("🌲 forêt")


def test_words_split_on_punctuation_and_keep_marks_and_emoji_sequences() -> None:
    from geocl.retrieval.text import split_words

    assert split_words("bare_soil, bare-soil!") == ["bare", "soil", "bare", "soil"]
    assert split_words("forest+water 2nd") == ["forest", "+", "water", "2nd"]
    assert split_words("fore\u0302t 👍🏽 ❤️x") == ["fore\u0302t", "👍🏽", "❤️", "x"]
    assert split_words("पानी के पास") == ["पानी", "के", "पास"]  # vowel signs (marks) stay in their word
    assert split_words("...  \u200b") == []
