"""Semi-supervised FBA training: the loss is the spec's sum of terms, the baseline ignores unlabelled data,
and 2D / 3D FBA-Net+ train a tiny budget end to end (plus a tile-set run against supervised-only)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import lightning
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from geocl.data.tile_dataset import IGNORE_INDEX
from geocl.errors import GeoclError
from geocl.finetune.downstream import TrainingBudget
from geocl.finetune.semi_supervised import FBAOptions, run_semi_supervised
from geocl.finetune.semi_supervised_config import CONTRAST_BALANCE, SemiSupervisedConfig
from geocl.finetune.semi_supervised_data import CaseSlices, case_dice, rot_flip
from geocl.finetune.semi_supervised_module import SemiSupervisedSegmenter, fit_semi_supervised
from geocl.losses.fba import released_dice_loss, sharpen, sigmoid_rampup

TINY_3D = {"width": 4, "depth": 3, "embedding_dim": 16}
TINY_2D = {"encoder": "test_resnet", "decoder_channels": (32, 16, 16, 8, 8), "embedding_dim": 16}


def segmenter(spatial_dims: Literal[2, 3], in_chans: int, num_classes: int, **settings: Any) -> SemiSupervisedSegmenter:
    """A module with the given :class:`SemiSupervisedConfig` fields (the others at their defaults)."""
    return SemiSupervisedSegmenter(spatial_dims, in_chans, num_classes, SemiSupervisedConfig(**settings))


def fit(
    module: SemiSupervisedSegmenter,
    labelled: Dataset,
    unlabelled: Dataset | None,
    *,
    out: Path,
    val: Dataset | None,
    monitor: str = "val/dice",
    **budget: Any,
) -> lightning.Trainer:
    """fit_semi_supervised, validating every epoch, without progress bars."""
    settings = TrainingBudget(val_every=1, progress=False, **budget)
    return fit_semi_supervised(module, labelled, unlabelled, out=out, budget=settings, val=val, monitor=monitor)


class Cubes(Dataset):
    """Noisy volumes ``[1, S, S, S]`` with one bright cube of foreground (class 1)."""

    def __init__(self, count: int, side: int = 16, *, with_mask: bool = True, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(count):
            mask = torch.zeros(side, side, side, dtype=torch.long)
            size = int(torch.randint(side // 4, side // 2, (), generator=generator))
            x, y, z = (int(torch.randint(0, side - size, (), generator=generator)) for _ in range(3))
            mask[x : x + size, y : y + size, z : z + size] = 1
            image = (mask.float() + 0.3 * torch.randn(side, side, side, generator=generator))[None]
            self.items.append({"image": image, "mask": mask} if with_mask else {"image": image})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


class Quadrants(Dataset):
    """32 x 32 slices of 4 classes (shifted quadrants, class = intensity level), a nodata strip ignored."""

    def __init__(self, count: int, *, with_mask: bool = True, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(count):
            row, col = (int(torch.randint(8, 24, (), generator=generator)) for _ in range(2))
            mask = torch.zeros(32, 32, dtype=torch.long)
            mask[:row, col:], mask[row:, :col], mask[row:, col:] = 1, 2, 3
            image = (mask.float() / 3 + 0.2 * torch.randn(32, 32, generator=generator))[None]
            mask[:, :2] = IGNORE_INDEX
            self.items.append({"image": image, "mask": mask} if with_mask else {"image": image})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def _parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _logged(out: Path) -> pd.DataFrame:
    (metrics,) = out.glob("logs/*/metrics.csv")
    return pd.read_csv(metrics)


# --- end to end -----------------------------------------------------------------------


def test_3d_fba_net_plus_trains_a_tiny_budget_end_to_end(tmp_path: Path) -> None:
    lightning.seed_everything(0, verbose=False)
    module = segmenter(
        3,
        1,
        2,
        decoders=3,
        labelled_bs=2,
        patch_size=(16, 16, 16),
        rampup_iterations=1,
        consistency_rampup=4,
        **TINY_3D,
    )
    before = _parameters(module)
    trainer = fit(
        module,
        Cubes(4),
        Cubes(6, with_mask=False, seed=1),
        out=tmp_path,
        batch_size=4,
        val=Cubes(2, seed=2),
        max_epochs=2,
        steps_per_epoch=2,
        accelerator="cpu",
    )
    assert trainer.global_step == 4
    changed = {name for name, value in _parameters(module).items() if not torch.equal(value, before[name])}
    assert changed == set(before)  # encoder, all 3 decoders and all 3 contrast heads learn
    logged = _logged(tmp_path)
    steps = logged.dropna(subset=["train/loss"])
    assert len(steps) == 4 and steps["train/loss"].map(math.isfinite).all()
    assert (steps["train/contrast"] > 0).all() and (steps["train/consistency"] > 0).all()
    # w(t) at the 1-based iteration, 1 iteration per ramp unit, 4 units
    expected = [math.exp(-5 * (1 - min(k, 4) / 4) ** 2) for k in (1, 2, 3, 4)]
    assert steps["train/consistency_weight"].tolist() == pytest.approx(expected, rel=1e-5)
    # the last validation saw the final weights: its Dice is 2 TP / (2 TP + FP + FN) of decoder 1 over the set
    val = Cubes(2, seed=2)
    with torch.no_grad():
        first, _ = module.eval().predict_probabilities(torch.stack([item["image"] for item in val.items]))
    predicted, truth = first.argmax(1) == 1, torch.stack([item["mask"] for item in val.items]) == 1
    tp, fp, fn = (predicted & truth).sum(), (predicted & ~truth).sum(), (~predicted & truth).sum()
    assert module.results["val"]["dice"] == pytest.approx(float(2 * tp / (2 * tp + fp + fn)), abs=1e-6)
    assert 0.0 <= module.results["val"]["miou"] <= 1.0
    best = Path(trainer.checkpoint_callback.best_model_path)
    assert best == tmp_path / "checkpoints" / "best.ckpt" and best.exists()
    reloaded = SemiSupervisedSegmenter.load_from_checkpoint(best).eval()
    volume = Cubes(1, seed=5)[0]["image"][None]
    module.load_state_dict(torch.load(best, weights_only=False)["state_dict"])
    expected, _ = module.eval().predict_probabilities(volume)
    torch.testing.assert_close(reloaded.predict_probabilities(volume)[0], expected)


def test_2d_multiclass_fba_net_plus_trains_a_tiny_budget_end_to_end(tmp_path: Path) -> None:
    lightning.seed_everything(0, verbose=False)
    module = segmenter(2, 1, 4, decoders=3, labelled_bs=2, contrast_mode="pooled-map", pooled_grid=8, **TINY_2D)
    assert all(not head.binary for head in module.contrast)  # the per-class path of the 2D code
    before = _parameters(module)
    trainer = fit(
        module,
        Quadrants(4),
        Quadrants(6, with_mask=False, seed=1),
        out=tmp_path,
        batch_size=4,
        val=Quadrants(2, seed=2),
        max_epochs=1,
        steps_per_epoch=3,
        monitor="val/miou",
        accelerator="cpu",
    )
    assert trainer.global_step == 3
    assert all(not torch.equal(p, before[n]) for n, p in _parameters(module).items())
    steps = _logged(tmp_path).dropna(subset=["train/loss"])
    assert steps["train/loss"].map(math.isfinite).all() and (steps["train/contrast"] > 0).all()
    assert 0.0 <= module.results["val"]["miou"] <= 1.0 and len(module.results["val"]["iou"]) == 4


# --- the loss terms -------------------------------------------------------------------


def _batch(count: int = 4, labelled: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    cubes = Cubes(count, side=8, seed=3)
    images = torch.stack([cubes[i]["image"] for i in range(count)])
    masks = torch.stack([cubes[i]["mask"] for i in range(labelled)])
    return images, masks


def released_binary_dice(foreground: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``Binary_dice_loss``: 1 - (2 sum(p y) + e) / (sum p + sum y + e) over the whole labelled sub-batch."""
    return 1 - (2 * (foreground * target).sum() + eps) / (foreground.sum() + target.sum() + eps)


def test_the_loss_is_the_spec_sum_of_dice_consistency_and_contrast() -> None:
    torch.manual_seed(0)
    module = segmenter(
        3, 1, 2, decoders=3, labelled_bs=2, patch_size=(8, 8, 8), dropout=0.0, variant="released", **TINY_3D
    ).train()
    images, masks = _batch()
    step = 300  # iteration 301: floor(301 / 150) = 2 units of 40
    terms = module.losses(images, masks, step)
    logits = module.network(images)  # training-mode BatchNorm on the same batch: the same outputs
    probabilities = [torch.softmax(z, dim=1) for z in logits]
    dice = sum(released_binary_dice(p[:2, 1], (masks == 1).float()) for p in probabilities)
    consistency = sum(
        ((probabilities[i] - sharpen(probabilities[j])) ** 2).mean() for i in range(3) for j in range(3) if i != j
    )
    contrast = sum(head(z) for head, z in zip(module.contrast, logits, strict=True))
    weight = math.exp(-5 * (1 - 2 / 40) ** 2)
    assert module.dice_weight == 0.5  # 3D FBA-Net+
    torch.testing.assert_close(terms["supervised"], 0.5 * dice)
    torch.testing.assert_close(terms["consistency"], consistency)
    torch.testing.assert_close(terms["contrast"], contrast)
    assert float(terms["consistency_weight"]) == pytest.approx(weight)
    torch.testing.assert_close(terms["loss"], 0.5 * dice + weight * consistency + contrast)


def test_dice_skips_ignored_pixels_and_cross_entropy_is_optional() -> None:
    torch.manual_seed(0)
    module = segmenter(3, 1, 2, decoders=1, labelled_bs=2, patch_size=(8, 8, 8), ce_weight=0.7, dropout=0.0, **TINY_3D)
    images, masks = _batch()
    masks[:, :2] = IGNORE_INDEX
    (logits,) = module.network(images)
    valid = (masks != IGNORE_INDEX).float()
    foreground = torch.softmax(logits[:2], dim=1)[:, 1] * valid
    expected = released_binary_dice(foreground, (masks == 1).float()) + 0.7 * torch.nn.functional.cross_entropy(
        logits[:2], masks, ignore_index=IGNORE_INDEX
    )
    torch.testing.assert_close(module.supervised_loss([logits], masks), expected)


@pytest.mark.filterwarnings("ignore:You are trying to")  # a training step outside a Trainer
def test_supervised_only_forwards_the_labelled_items_alone_and_is_a_plain_baseline() -> None:
    torch.manual_seed(0)
    module = segmenter(
        3,
        1,
        2,
        decoders=1,
        labelled_bs=2,
        supervised_only=True,
        augment=False,
        patch_size=(8, 8, 8),
        dropout=0.0,
        **TINY_3D,
    )
    assert len(module.contrast) == 0 and module.dice_weight == 1.0
    seen: list[int] = []
    module.network.register_forward_hook(lambda _m, inputs, _o: seen.append(len(inputs[0])))
    images, masks = _batch()
    loss = module.training_step({"image": images, "mask": masks}, 0)
    assert seen == [2]
    (logits,) = module.network(images[:2])
    torch.testing.assert_close(loss, released_binary_dice(torch.softmax(logits, 1)[:, 1], (masks == 1).float()))


def test_loss_weights_follow_the_variant() -> None:
    assert segmenter(3, 1, 2, decoders=1, contrast_weight=0, **TINY_3D).dice_weight == 1.0
    assert segmenter(2, 1, 3, decoders=3, contrast_weight=0, **TINY_2D).dice_weight == 1.0
    chosen = segmenter(3, 1, 2, decoders=3, dice_weight=0.2, contrast_weight=0, **TINY_3D)
    assert chosen.dice_weight == 0.2
    assert len(segmenter(3, 1, 2, decoders=3, contrast_weight=0, **TINY_3D).contrast) == 0


# --- batches, augmentation, inference, errors -----------------------------------------


def test_augmentation_moves_image_and_mask_together_and_crops_or_pads_to_the_patch() -> None:
    torch.manual_seed(0)
    module = segmenter(3, 1, 2, decoders=1, patch_size=(8, 8, 8), contrast_weight=0, **TINY_3D)
    mask = torch.arange(6 * 12 * 8).reshape(6, 12, 8) % 2
    for _ in range(8):
        image, cropped = module.augment_item(mask[None].float(), mask)
        assert image.shape == (1, 8, 8, 8) and cropped.shape == (8, 8, 8)
        padded = cropped == IGNORE_INDEX  # 6 slices padded to 8: one before, one after
        assert int(padded.sum()) == 2 * 8 * 8
        torch.testing.assert_close(image[0][~padded], cropped[~padded].float())
        assert (image[0][padded] == 0).all()


def test_sliding_window_predicts_volumes_larger_than_the_patch() -> None:
    module = segmenter(3, 1, 2, decoders=3, patch_size=(8, 8, 8), **TINY_3D).eval()
    first, mean = module.predict_probabilities(torch.randn(1, 1, 16, 12, 8))
    assert first.shape == mean.shape == (1, 2, 16, 12, 8)
    torch.testing.assert_close(first.sum(1), torch.ones(1, 16, 12, 8))


def test_bad_settings_and_batches_are_clear_errors() -> None:
    with pytest.raises(GeoclError, match="patch_size"):
        segmenter(3, 1, 2, **TINY_3D)  # code mode needs the size
    with pytest.raises(GeoclError, match="multiples of 4"):
        segmenter(3, 1, 2, patch_size=(8, 8, 6), **TINY_3D)
    module = segmenter(3, 1, 2, decoders=1, patch_size=(8, 8, 8), **TINY_3D)
    images, masks = _batch()
    with pytest.raises(GeoclError, match="class indices 0..1"):
        module.training_step({"image": images, "mask": masks + 3}, 0)
    with pytest.raises(ValueError, match="at least 2 labelled"):
        module.training_step({"image": images, "mask": masks[:1]}, 0)


# --- remote-sensing tiles -------------------------------------------------------------


@pytest.mark.slow  # two Lightning runs with validation and test: ~15 s of CPU
def test_tile_set_runs_semi_supervised_and_supervised_only_on_the_same_labels(tmp_path: Path, tiny_tiles: Path) -> None:
    budget: dict[str, Any] = {
        "max_epochs": 1,
        "steps_per_epoch": 2,
        "val_every": 1,
        "batch_size": 4,
        "crop": 32,
        "encoder": "test_resnet",
        "label_fraction": 0.2,
        "progress": False,
        "accelerator": "cpu",
    }
    network = {"labelled_bs": 2, "decoder_channels": (16, 8, 8, 8, 8)}
    fba, supervised = FBAOptions(decoders=3, **network), FBAOptions(decoders=1, supervised_only=True, **network)
    semi = run_semi_supervised(tiles=tiny_tiles, out=tmp_path / "fba", fba=fba, **budget)
    base = run_semi_supervised(tiles=tiny_tiles, out=tmp_path / "base", fba=supervised, **budget)
    fba_metrics = json.loads((tmp_path / "fba" / "metrics.json").read_text())
    base_metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert semi.train_tiles == base.train_tiles == fba_metrics["train_tiles"] > 0
    assert fba_metrics["unlabelled_tiles"] > 0 and base_metrics["unlabelled_tiles"] == 0
    assert fba_metrics["supervised_only"] is False and base_metrics["supervised_only"] is True
    hyper = torch.load(semi.checkpoint, weights_only=True)["hyper_parameters"]["config"]
    assert hyper["rampup_iterations"] == 1  # the ramp scaled to the 2-step budget (ends at 40 %)
    assert hyper["contrast_mode"] == "pooled-map" and hyper["decoders"] == 3
    for metrics, result in ((fba_metrics, semi), (base_metrics, base)):
        assert 0.0 <= metrics["miou"] <= 1.0 and metrics["miou"] == pytest.approx(result.miou)
        assert result.checkpoint.exists()
    # metrics.json keeps the keys it had before the skeleton (no options record)
    assert list(fba_metrics) == [
        "miou", "iou", "dice", "val_miou", "classes", "label_fraction", "seed", "subset_seed", "train_tiles",
        "unlabelled_tiles", "supervised_only", "decoders", "encoder", "encoder_checkpoint", "arch", "checkpoint",
        "seconds",
    ]  # fmt: skip
    with pytest.raises(GeoclError, match="holds a finetuning run"):
        run_semi_supervised(tiles=tiny_tiles, out=tmp_path / "fba", **budget)


# --- the presets: released 2D Dice, the stable contrast weight, the collapse -----------------


def released_2d_dice(inputs: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The released ``DiceLoss.forward`` (FBA-Net ``code/utils/losses.py``), re-typed: a loop over classes."""
    target = torch.cat([(target.unsqueeze(1) == i).float() for i in range(n_classes)], dim=1)
    loss = 0.0
    for i in range(n_classes):
        score, truth = inputs[:, i], target[:, i]
        intersection = torch.sum(score * truth)
        union = torch.sum(score * score) + torch.sum(truth * truth) + 1e-10
        loss = loss + (1 - intersection / union)
    return loss / n_classes


def test_the_released_preset_has_the_released_2d_dice() -> None:
    torch.manual_seed(0)
    probabilities = torch.softmax(torch.randn(3, 4, 9, 7), dim=1)
    masks = torch.randint(0, 4, (3, 9, 7))
    expected = released_2d_dice(probabilities, masks, 4)
    torch.testing.assert_close(released_dice_loss(probabilities, masks), expected, atol=1e-6, rtol=0)
    module = segmenter(2, 1, 4, decoders=1, labelled_bs=3, contrast_weight=0, variant="released", **TINY_2D)
    logits = torch.randn(3, 4, 32, 32)
    masks = torch.randint(0, 4, (3, 32, 32))
    torch.testing.assert_close(
        module.supervised_loss([logits], masks), released_2d_dice(torch.softmax(logits, 1), masks, 4), atol=1e-6, rtol=0
    )
    # ignored pixels count nowhere: the released formula on the valid pixels alone
    masks[:, :, :5] = IGNORE_INDEX
    kept = torch.softmax(logits, 1)[..., 5:]
    torch.testing.assert_close(
        module.supervised_loss([logits], masks), released_2d_dice(kept, masks[..., 5:], 4), atol=1e-6, rtol=0
    )
    # the stable preset keeps MONAI's 1 - 2I / (sum p + sum t): another value on the same tensors
    stable = segmenter(2, 1, 4, decoders=1, labelled_bs=3, contrast_weight=0, **TINY_2D)
    assert abs(float(stable.supervised_loss([logits], masks)) - float(module.supervised_loss([logits], masks))) > 0.05


def test_the_stable_contrast_starts_at_a_tenth_of_the_dice_pull_and_ramps_up() -> None:
    torch.manual_seed(0)
    module = segmenter(
        2,
        1,
        4,
        decoders=3,
        labelled_bs=2,
        patch_size=(32, 32),
        contrast_mode="pooled-map",
        pooled_grid=8,
        rampup_iterations=1,
        **TINY_2D,
    ).train()
    images, masks = torch.randn(4, 1, 32, 32), torch.randint(0, 4, (2, 32, 32))
    terms = module.losses(images, masks, 0)
    logits = module.network(images)  # the same outputs: BatchNorm in training mode on the same batch
    supervised = torch.autograd.grad(module.supervised_loss(logits, masks), logits, retain_graph=True)
    contrast = torch.autograd.grad(sum(h(z) for h, z in zip(module.contrast, logits, strict=True)), logits)
    norm = lambda grads: math.sqrt(sum(float((g**2).sum()) for g in grads))  # noqa: E731
    scale = float(module.contrast_scale)
    assert scale < 1  # the released weight 1 would swamp the Dice
    assert scale * norm(contrast) == pytest.approx(CONTRAST_BALANCE * norm(supervised), rel=1e-3)
    assert float(terms["contrast_weight"]) == pytest.approx(scale * sigmoid_rampup(1, 40.0))
    assert module.contrast_weight_at(10_000) == pytest.approx(scale)  # the ramp's end
    module.losses(images, masks, 1)
    assert float(module.contrast_scale) == scale  # measured once
    # a first batch of background alone is not measured (its foreground Dice has no gradient): weight 0 until one is
    binary = segmenter(
        2,
        1,
        2,
        decoders=1,
        labelled_bs=2,
        patch_size=(32, 32),
        contrast_mode="pooled-map",
        pooled_grid=8,
        rampup_iterations=1,
        **TINY_2D,
    ).train()
    background = torch.zeros(2, 32, 32, dtype=torch.long)
    assert float(binary.losses(images, background, 0)["contrast_weight"]) == 0.0 and not binary.contrast_scale_set
    foreground = background.clone()
    foreground[:, 8:20, 8:20] = 1
    assert float(binary.losses(images, foreground, 1)["contrast_weight"]) > 0 and binary.contrast_scale_set
    released = segmenter(
        2,
        1,
        4,
        decoders=3,
        labelled_bs=2,
        patch_size=(32, 32),
        variant="released",
        contrast_mode="pooled-map",
        pooled_grid=8,
        **TINY_2D,
    )
    assert released.contrast_weight_at(0) == 1.0


def _contrast_after_training(variant: str, steps: int) -> tuple[list[float], float]:
    torch.manual_seed(0)
    module = segmenter(
        3,
        1,
        2,
        decoders=1,
        labelled_bs=2,
        patch_size=(16, 16, 16),
        augment=False,
        rampup_iterations=1,
        variant=variant,
        **TINY_3D,
    ).train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)  # released
    cubes = Cubes(4)
    images = torch.stack([item["image"] for item in cubes.items])
    masks = torch.stack([item["mask"] for item in cubes.items[:2]])
    values = []
    for step in range(steps):
        terms = module.losses(images, masks, step)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        values.append(float(terms["contrast"].detach()))
    return values, module.contrast[0].floor()


def test_on_a_toy_batch_the_released_contrast_reaches_its_floor_and_the_stable_one_stays_above() -> None:
    released, floor = _contrast_after_training("released", 8)
    assert released[-1] == pytest.approx(floor, rel=1e-3)  # collapsed: no gradient from it any more
    stable, floor = _contrast_after_training("stable", 8)
    assert min(stable) > 100 * floor


# --- augmentation axes ------------------------------------------------------------------


def _in_plane_reflections(volume: torch.Tensor, plane: tuple[int, int]) -> dict[str, torch.Tensor]:
    first, second = plane
    return {
        "flip-first": volume.flip(first),
        "flip-second": volume.flip(second),
        "transpose": volume.transpose(first, second),
        "anti-transpose": volume.flip(first).flip(second).transpose(first, second),
    }


def test_3d_augmentation_turns_and_flips_only_the_axial_plane() -> None:
    # [1, X, Y, Z] with a Z profile found nowhere else: every draw keeps each Z slice's values in its slice
    volume = torch.arange(6 * 6 * 5, dtype=torch.float32).reshape(1, 6, 6, 5)
    mask = (volume[0] % 7).long()
    reflections = _in_plane_reflections(volume, (1, 2))
    seen = set()
    for _ in range(96):
        image, turned = rot_flip(volume, mask)
        assert image.shape == volume.shape
        for z in range(5):
            assert sorted(image[0, :, :, z].flatten().tolist()) == sorted(volume[0, :, :, z].flatten().tolist())
        name = next(name for name, reflected in reflections.items() if torch.equal(image, reflected))
        assert torch.equal(turned, (image[0] % 7).long())  # the mask moves with the image
        seen.add(name)
    # a flip follows every turn (released), so each draw is one of the 4 in-plane reflections; the two
    # transposes need odd quarter turns in the X-Y plane, flip-first is the X flip
    assert seen == set(reflections)


@pytest.mark.parametrize("turns", range(4))
@pytest.mark.parametrize("axis", range(2))
def test_each_draw_is_the_released_rot90_then_flip_of_an_x_y_z_volume(
    turns: int, axis: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # released RandomRotFlip on an [X, Y, Z] array: np.rot90(image, k) (axes 0, 1), then np.flip(image, axis)
    volume = np.random.default_rng(0).normal(size=(5, 5, 3)).astype(np.float32)
    expected = np.flip(np.rot90(volume, turns), axis=axis).copy()
    draws = iter([turns, axis])
    monkeypatch.setattr(torch, "randint", lambda low, high, size: torch.tensor(next(draws)))
    image, mask = rot_flip(torch.from_numpy(volume)[None], torch.from_numpy(volume > 0))
    np.testing.assert_array_equal(image[0].numpy(), expected)
    np.testing.assert_array_equal(mask.numpy(), expected > 0)


def test_2d_augmentation_is_d4_and_a_plane_that_is_not_square_keeps_its_shape() -> None:
    tile = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    reflections = _in_plane_reflections(tile, (1, 2))
    drawn = [rot_flip(tile)[0] for _ in range(64)]
    assert {next(n for n, r in reflections.items() if torch.equal(image, r)) for image in drawn} == set(reflections)
    patch = torch.arange(6 * 4 * 3, dtype=torch.float32).reshape(1, 6, 4, 3)
    for _ in range(32):
        image, _ = rot_flip(patch)
        assert image.shape == patch.shape
        assert torch.equal(image, patch.flip(1)) or torch.equal(image, patch.flip(2))  # even turns only


# --- per-case validation ----------------------------------------------------------------


def test_case_dice_is_the_mean_over_foreground_classes_of_one_case() -> None:
    prediction = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0]])
    mask = torch.tensor([[0, 1, 0, 2], [2, 0, 0, IGNORE_INDEX]])
    # class 1: P = 2, G = 1, overlap 1 -> 2/3; class 2: P = 3, G = 2, overlap 2 -> 4/5
    assert case_dice(prediction, mask, 3) == pytest.approx((2 / 3 + 4 / 5) / 2)
    # a class in neither counts 1 (as the test's case metrics); the ignored pixel counts nowhere
    assert case_dice(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), 2) == 1.0
    assert case_dice(prediction, mask, 4) == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)


@pytest.mark.filterwarnings("ignore:You are trying to")  # self.log outside a Trainer
def test_per_case_validation_averages_case_dice_not_pooled_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    module = segmenter(2, 1, 2, decoders=1, labelled_bs=2, contrast_weight=0, val_per_case=True, **TINY_2D).eval()
    # case A: 2 slices, a large object found exactly; case B: 1 slice, a small object half found
    masks = {"A": torch.zeros(2, 4, 4, dtype=torch.long), "B": torch.zeros(1, 4, 4, dtype=torch.long)}
    masks["A"][:, :3, :3] = 1
    masks["B"][0, 0, :2] = 1
    predictions = {"A": masks["A"].clone(), "B": torch.zeros(1, 4, 4, dtype=torch.long)}
    predictions["B"][0, 0, 0] = 1
    stacks = {name: torch.zeros(len(m), 1, 4, 4) + i for i, (name, m) in enumerate(masks.items())}

    def probabilities(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        name = "A" if float(images.mean()) == 0 else "B"
        one_hot = torch.nn.functional.one_hot(predictions[name], 2).movedim(-1, 1).float()
        return one_hot, one_hot

    monkeypatch.setattr(module, "predict_probabilities", probabilities)
    for name in masks:
        module.validation_step({"image": stacks[name][None], "mask": masks[name][None]}, 0)
    module.on_validation_epoch_end()
    case_b = 2 * 1 / (1 + 2)
    assert module.results["val"]["dice"] == pytest.approx((1.0 + case_b) / 2)
    pooled = 2 * (18 + 1) / (18 + 1 + 18 + 2)  # what pooled slices would read: optimistic
    assert pooled > module.results["val"]["dice"] + 0.1


def test_case_slices_groups_the_slices_of_each_case() -> None:
    class Slices(Dataset):
        cases = ["a", "a", "b", "a"]

        def __len__(self) -> int:
            return len(self.cases)

        def __getitem__(self, item: int) -> dict:
            return {
                "image": torch.full((1, 2, 2), float(item)),
                "mask": torch.zeros(2, 2, dtype=torch.long),
                "case": self.cases[item],
            }

    grouped = CaseSlices(Slices())
    assert len(grouped) == 2 and grouped.cases == ["a", "b"]
    assert grouped[0]["image"].shape == (3, 1, 2, 2)
    assert grouped[0]["image"][:, 0, 0, 0].tolist() == [0.0, 1.0, 3.0]
    assert grouped[1]["mask"].shape == (1, 2, 2)
