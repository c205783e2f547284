"""Multi-positive symmetric InfoNCE: one-hot CLIP when captions differ, a naive loop otherwise, DDP against one process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from geocl.losses.multi_positive import MultiPositiveInfoNCELoss, multi_positive_targets
from tests.distributed import run_distributed


def naive_multi_positive(text: torch.Tensor, image: torch.Tensor, groups: list[int], scale: float) -> float:
    """The spec's formula, caption by caption and image by image, in float64."""
    t = F.normalize(text.double(), dim=1)
    v = F.normalize(image.double(), dim=1)
    n = len(groups)

    def direction(rows: torch.Tensor, columns: torch.Tensor) -> float:
        total = 0.0
        for m in range(n):
            logits = [scale * float(rows[m] @ columns[j]) for j in range(n)]
            log_norm = math.log(sum(math.exp(value) for value in logits))
            positives = [j for j in range(n) if groups[j] == groups[m]]
            total -= sum((logits[j] - log_norm) / len(positives) for j in positives)
        return total / n

    return (direction(t, v) + direction(v, t)) / 2


def _pair(n: int = 6, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator)


def test_all_distinct_captions_give_the_one_hot_clip_loss() -> None:
    text, image = _pair()
    scale = torch.tensor(1 / 0.07)
    loss = MultiPositiveInfoNCELoss()(text, image, torch.arange(6), scale)
    logits = scale * F.normalize(text, dim=1) @ F.normalize(image, dim=1).T
    clip = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    assert float(loss) == pytest.approx(float(clip), abs=1e-5)


@pytest.mark.parametrize("groups", [[0, 1, 0, 2, 1, 0], [3, 3, 3, 3, 3, 3], [0, 1, 2, 3, 4, 4]])
def test_repeated_captions_equal_the_naive_loop(groups: list[int]) -> None:
    text, image = _pair(seed=1)
    loss = MultiPositiveInfoNCELoss()(text, image, torch.tensor(groups), torch.tensor(5.0))
    assert float(loss) == pytest.approx(naive_multi_positive(text, image, groups, 5.0), abs=1e-5)


def test_targets_rows_sum_to_one_and_spread_over_equivalent_captions() -> None:
    targets = multi_positive_targets(torch.tensor([4, 7, 4, 4]))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(targets[0], torch.tensor([1 / 3, 0.0, 1 / 3, 1 / 3]))
    torch.testing.assert_close(targets[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="positive"):
        multi_positive_targets(torch.tensor([1, 2]), torch.tensor([2, 2]))


def test_limits_aligned_orthogonal_embeddings_and_identical_embeddings() -> None:
    aligned = torch.eye(5)
    near_zero = MultiPositiveInfoNCELoss()(aligned, aligned, torch.arange(5), torch.tensor(100.0))
    assert float(near_zero) < 1e-6
    same = torch.ones(5, 3)
    assert float(MultiPositiveInfoNCELoss()(same, same, torch.arange(5), torch.tensor(10.0))) == pytest.approx(
        math.log(5)
    )


def test_symmetric_under_swapping_modalities_and_gradients_reach_both_and_the_scale() -> None:
    text, image = _pair(seed=2)
    text.requires_grad_(True)
    image.requires_grad_(True)
    scale = torch.tensor(4.0, requires_grad=True)
    groups = torch.tensor([0, 1, 1, 2, 3, 3])
    loss = MultiPositiveInfoNCELoss()(text, image, groups, scale)
    swapped = MultiPositiveInfoNCELoss()(image, text, groups, scale)
    assert float(loss.detach()) == pytest.approx(float(swapped.detach()), abs=1e-6)
    loss.backward()
    assert text.grad.abs().sum() > 0 and image.grad.abs().sum() > 0 and scale.grad is not None


# ------------------------------------------------------------------ DDP


def _ddp_worker(rank: int, world: int, out: Path) -> None:
    text, image = _pair(n=8, seed=3)
    groups = torch.tensor([0, 1, 0, 2, 3, 1, 4, 0])
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    local_text = text[rows].clone().requires_grad_(True)
    local_image = image[rows].clone().requires_grad_(True)
    loss = MultiPositiveInfoNCELoss()(local_text, local_image, groups[rows], torch.tensor(3.0))
    loss.backward()
    torch.save(
        {"loss": loss.detach(), "text_grad": local_text.grad, "image_grad": local_image.grad}, out / f"rank{rank}.pt"
    )


@pytest.mark.slow  # two processes; tests/losses/test_ntxent.py keeps the gathered-batch check in the default suite
def test_two_gloo_processes_match_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    ranks = run_distributed(_ddp_worker, world=2, out=tmp_path)
    text, image = _pair(n=8, seed=3)
    text.requires_grad_(True)
    image.requires_grad_(True)
    whole = MultiPositiveInfoNCELoss()(text, image, torch.tensor([0, 1, 0, 2, 3, 1, 4, 0]), torch.tensor(3.0))
    whole.backward()
    # each process averages its own rows; their mean is the one-process loss
    assert float(sum(rank["loss"] for rank in ranks) / 2) == pytest.approx(float(whole.detach()), abs=1e-6)
    # a process's gradient of its own rows is world x the one-process one (lightly's gather sums the
    # gradients of all processes' losses), and DDP divides by world again when it averages
    for rank, part in enumerate(ranks):
        rows = slice(rank * 4, (rank + 1) * 4)
        torch.testing.assert_close(part["text_grad"] / 2, text.grad[rows], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(part["image_grad"] / 2, image.grad[rows], atol=1e-6, rtol=1e-5)
