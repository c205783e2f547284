"""Split-encode-combine: tile layout against explicit slicing, combinations against hand-picked means."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from geocl.models import combine_tiles, num_combinations, split_tiles, tile_combinations


def _images(batch: int = 3, bands: int = 4, size: int = 12) -> torch.Tensor:
    return torch.randn(batch, bands, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("splits", [1, 2, 3])
def test_split_puts_tile_k_of_image_i_at_row_k_times_b_plus_i_and_reassembles_exactly(splits: int) -> None:
    images = _images()
    batch, side = len(images), images.shape[-1] // splits
    tiles = split_tiles(images, splits)
    assert tiles.shape == (splits * splits * batch, 4, side, side)
    rebuilt = torch.empty_like(images)
    for col in range(splits):
        for row in range(splits):
            k = col * splits + row  # column-major (spec ambiguity 7)
            for i in range(batch):
                window = (slice(row * side, (row + 1) * side), slice(col * side, (col + 1) * side))
                assert torch.equal(tiles[k * batch + i], images[i][:, window[0], window[1]])
                rebuilt[i][:, window[0], window[1]] = tiles[k * batch + i]
    assert torch.equal(rebuilt, images)


def test_split_refuses_sizes_that_do_not_divide() -> None:
    with pytest.raises(ValueError, match="3 x 3"):
        split_tiles(_images(size=10), 3)


def test_six_pair_combinations_are_means_of_two_distinct_tiles() -> None:
    batch, dim = 5, 7
    features = torch.randn(4 * batch, dim, generator=torch.Generator().manual_seed(1))
    combined = combine_tiles(features, num_tiles=4, combs=2)
    assert combined.shape == (6 * batch, dim) and num_combinations(2, 2) == 6
    blocks = combined.reshape(6, batch, dim)
    pairs = [tuple(pair) for pair in tile_combinations(4, 2).tolist()]
    assert len(set(pairs)) == 6 and all(a != b for a, b in pairs)
    for j, (a, b) in enumerate(pairs):
        for i in range(batch):
            expected = (features[a * batch + i] + features[b * batch + i]) / 2
            torch.testing.assert_close(blocks[j, i], expected)
    # every block is a pair mean of its own image and no other pair gives it
    for j in range(6):
        others = [p for p in itertools.combinations(range(4), 2) if p != pairs[j]]
        for a, b in others:
            other = (features[a * batch : (a + 1) * batch] + features[b * batch : (b + 1) * batch]) / 2
            assert not torch.allclose(blocks[j], other)


def test_one_tile_combinations_are_the_tiles_and_all_tiles_give_the_full_mean() -> None:
    batch, dim = 3, 5
    features = torch.randn(4 * batch, dim, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(combine_tiles(features, num_tiles=4, combs=1), features)
    whole = combine_tiles(features, num_tiles=4, combs=4)
    assert whole.shape == (batch, dim)
    torch.testing.assert_close(whole, features.reshape(4, batch, dim).mean(dim=0))


@pytest.mark.parametrize(("splits", "combs"), [(2, 2), (3, 2), (3, 3)])
def test_combination_count_is_the_binomial(splits: int, combs: int) -> None:
    n = splits * splits
    features = torch.randn(n * 2, 3)
    assert combine_tiles(features, n, combs).shape[0] == math.comb(n, combs) * 2 == num_combinations(splits, combs) * 2


def test_combine_refuses_bad_combs() -> None:
    with pytest.raises(ValueError, match="combs"):
        combine_tiles(torch.zeros(8, 2), num_tiles=4, combs=5)
