"""PatchMix mixing: tokens against their recorded sources, exact proportions, targets against naive loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geocl.errors import GeoclError
from geocl.transforms import PatchMix
from geocl.transforms.patchmix import (
    from_tokens,
    instance_targets,
    mix_targets,
    mixed_pair_targets,
    source_proportions,
    to_tokens,
)


def _batch(n: int = 6, bands: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, bands, size, size, generator=torch.Generator().manual_seed(seed))


def naive_proportions(sources: torch.Tensor) -> list[list[float]]:
    n, t = sources.shape
    return [[sum(1 for k in range(t) if int(sources[g, k]) == s) / t for s in range(n)] for g in range(n)]


def test_tokens_are_unfold_patches_and_fold_back_exactly() -> None:
    images = _batch(3, 13, 24)
    tokens = to_tokens(images, 8)
    torch.testing.assert_close(tokens, F.unfold(images, 8, stride=8).transpose(1, 2), rtol=0, atol=0)
    assert torch.equal(from_tokens(tokens, 13, (24, 24), 8), images)


@pytest.mark.parametrize(("bands", "num_mix"), [(3, 2), (4, 3), (13, 2), (4, 4)])
def test_every_token_equals_the_same_position_token_of_its_recorded_source(bands: int, num_mix: int) -> None:
    images, patch = _batch(7, bands, 32), 8
    mixed = PatchMix(patch, num_mix)(images, generator=torch.Generator().manual_seed(1))
    assert mixed.images.shape == images.shape and mixed.sources.shape == (7, 16)
    w = 32 // patch
    for g in range(7):
        for t in range(16):
            s = int(mixed.sources[g, t])
            assert s in {(g + j) % 7 for j in range(num_mix)}
            rows, cols = slice(t // w * patch, (t // w + 1) * patch), slice(t % w * patch, (t % w + 1) * patch)
            assert torch.equal(mixed.images[g, :, rows, cols], images[s, :, rows, cols])


@pytest.mark.parametrize("num_mix", [2, 4])
def test_each_source_contributes_exactly_one_mth_when_tokens_divide(num_mix: int) -> None:
    mixed = PatchMix(8, num_mix)(_batch(8, 4, 32))  # 16 tokens
    for g in range(8):
        counts = torch.bincount(mixed.sources[g], minlength=8)
        for j in range(num_mix):
            assert int(counts[(g + j) % 8]) == 16 // num_mix
        assert int(counts.sum()) == 16


def test_leftover_tokens_stay_with_the_anchor_and_proportions_are_exact() -> None:
    mixed = PatchMix(8, 2)(_batch(5, 3, 24))  # 9 tokens, m = 2: groups of 4, one left over
    proportions = source_proportions(mixed.sources)
    for g in range(5):
        assert proportions[g, g] == pytest.approx(5 / 9) and proportions[g, (g + 1) % 5] == pytest.approx(4 / 9)
    torch.testing.assert_close(proportions, torch.tensor(naive_proportions(mixed.sources)))
    torch.testing.assert_close(mix_targets(mixed.sources).sum(1), torch.ones(5))


def test_one_source_or_identical_images_leave_the_batch_unchanged() -> None:
    images = _batch(4)
    single = PatchMix(8, 1)(images)
    assert torch.equal(single.images, images)
    assert torch.equal(mix_targets(single.sources), instance_targets(4))
    same = images[:1].expand(5, -1, -1, -1).contiguous()
    assert torch.equal(PatchMix(8, 2)(same).images, same)


def test_two_calls_share_source_lists_but_not_positions() -> None:
    images = _batch(6)
    mixer = PatchMix(8, 2)
    first, second = mixer(images), mixer(images)
    assert not torch.equal(first.sources, second.sources)
    torch.testing.assert_close(source_proportions(first.sources), source_proportions(second.sources))


@pytest.mark.parametrize("num_mix", [2, 3])
def test_mixed_pair_targets_equal_a_naive_sum_over_sources(num_mix: int) -> None:
    images, n = _batch(7), 7
    mixer = PatchMix(8, num_mix)
    query, key = mixer(images).sources, mixer(images).sources
    lq, lk = naive_proportions(query), naive_proportions(key)
    expected = torch.tensor([[sum(lq[g][s] * lk[h][s] for s in range(n)) for h in range(n)] for g in range(n)])
    targets = mixed_pair_targets(query, key)
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets.sum(1), torch.ones(n))
    torch.testing.assert_close(targets, targets.T)  # same source lists in both views


def test_m2_targets_are_quarter_half_quarter_and_sit_at_the_rank_offset() -> None:
    mixer = PatchMix(8, 2)
    images = _batch(5)
    query, key = mixer(images).sources, mixer(images).sources
    y_mm = mixed_pair_targets(query, key, rank=1, world_size=3)
    y_mix = mix_targets(query, rank=1, world_size=3)
    y_src = instance_targets(5, rank=1, world_size=3)
    assert y_mm.shape == y_mix.shape == y_src.shape == (5, 15)
    for y in (y_mm, y_mix, y_src):
        assert y[:, :5].abs().sum() == 0 and y[:, 10:].abs().sum() == 0
        torch.testing.assert_close(y.sum(1), torch.ones(5))
    for g in range(5):
        assert [float(y_mm[g, 5 + (g + d) % 5]) for d in (-1, 0, 1)] == [0.25, 0.5, 0.25]
        assert [float(y_mix[g, 5 + (g + j) % 5]) for j in (0, 1)] == [0.5, 0.5]
        assert float(y_src[g, 5 + g]) == 1.0
        assert int((y_mix[g] > 0).sum()) == 2 and int((y_mm[g] > 0).sum()) == 3


def test_too_small_batches_and_views_off_the_patch_grid_are_refused() -> None:
    with pytest.raises(GeoclError, match="at least 5") as error:
        PatchMix(8, 3)(_batch(4))
    assert error.value.key == "data.batch_size"
    with pytest.raises(GeoclError) as error:
        PatchMix(8, 2)(_batch(4, size=36))
    assert error.value.key == "data.view_size"
    with pytest.raises(GeoclError):
        PatchMix(8, 0)
