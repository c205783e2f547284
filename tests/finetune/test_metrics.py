"""mIoU over a whole set, checked against a confusion matrix counted by hand."""

from __future__ import annotations

import math

import pytest
import torch

from geocl.data.tile_dataset import IGNORE_INDEX
from geocl.finetune.metrics import miou_from_confusion, segmentation_metric, summarize_iou

X = IGNORE_INDEX

# Image 1 holds classes 0 and 1 only (class 2 is absent from its reference); its third
# row has two unlabelled pixels, where the prediction (2, 0) must not count.
TARGET_1 = [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, X, X], [0, 0, 1, 1]]
PRED_1 = [[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 2, 0], [2, 0, 1, 0]]
# Image 2: its last row is unlabelled.
TARGET_2 = [[2, 2, 2, 2], [2, 2, 0, 0], [1, 1, 0, 0], [X, X, X, X]]
PRED_2 = [[2, 2, 2, 1], [2, 0, 0, 0], [1, 2, 0, 1], [0, 0, 0, 0]]

# Counted by hand, rows = reference, columns = prediction.
# image 1: reference 0 -> predicted 0 six times, 1 once, 2 once; reference 1 -> 1 five times, 0 once
CONFUSION_1 = [[6, 1, 1], [1, 5, 0], [0, 0, 0]]
# image 2: reference 0 -> 0 three times, 1 once; reference 1 -> 1 once, 2 once;
# reference 2 -> 2 four times, 1 once, 0 once
CONFUSION_2 = [[3, 1, 0], [0, 1, 1], [1, 1, 4]]
CONFUSION = [[9, 2, 1], [1, 6, 1], [1, 1, 4]]
# IoU_k = TP / (row sum + column sum - TP)
IOU = [9 / (12 + 11 - 9), 6 / (8 + 9 - 6), 4 / (6 + 6 - 4)]  # 9/14, 6/11, 1/2
MIOU = (9 / 14 + 6 / 11 + 1 / 2) / 3


def batch(*images: list[list[int]]) -> torch.Tensor:
    return torch.tensor(images, dtype=torch.long)


def test_hand_counted_confusion_and_miou() -> None:
    metric = segmentation_metric(3)
    metric.update(batch(PRED_1, PRED_2), batch(TARGET_1, TARGET_2))
    assert metric.confmat.tolist() == CONFUSION
    summary = summarize_iou(metric.compute())
    assert summary["iou"] == pytest.approx(IOU, abs=1e-6)
    assert summary["miou"] == pytest.approx(MIOU, abs=1e-6)


def test_two_updates_equal_one_update_on_the_concatenation() -> None:
    split = segmentation_metric(3)
    split.update(batch(PRED_1), batch(TARGET_1))
    assert split.confmat.tolist() == CONFUSION_1
    split.update(batch(PRED_2), batch(TARGET_2))
    joined = segmentation_metric(3)
    joined.update(batch(PRED_1, PRED_2), batch(TARGET_1, TARGET_2))
    assert torch.equal(split.confmat, joined.confmat)
    assert torch.allclose(split.compute(), joined.compute())


def test_logits_are_reduced_by_argmax() -> None:
    # one-hot logits [B, K, H, W] must give the same counts as class indices
    logits = torch.nn.functional.one_hot(batch(PRED_1, PRED_2), 3).permute(0, 3, 1, 2).float()
    metric = segmentation_metric(3)
    metric.update(logits * 5.0 - 1.0, batch(TARGET_1, TARGET_2))
    assert metric.confmat.tolist() == CONFUSION


def test_set_level_iou_is_not_the_mean_of_image_ious() -> None:
    # MMSeg convention: one confusion matrix over the set, not a mean of per-image mIoUs
    per_image = []
    for pred, target in ((PRED_1, TARGET_1), (PRED_2, TARGET_2)):
        metric = segmentation_metric(3)
        metric.update(batch(pred), batch(target))
        per_image.append(summarize_iou(metric.compute())["miou"])
    # image 1 lacks class 2 in reference and predicts it once: IoU_2 = 0 there, counted
    assert per_image[0] == pytest.approx((6 / 9 + 5 / 7 + 0.0) / 3)
    assert sum(per_image) / 2 != pytest.approx(MIOU, abs=1e-3)


def test_class_absent_from_the_whole_set_is_nan_and_left_out_of_the_mean() -> None:
    metric = segmentation_metric(4)  # class 3 occurs in neither reference nor prediction
    metric.update(batch(PRED_1, PRED_2), batch(TARGET_1, TARGET_2))
    summary = summarize_iou(metric.compute())
    assert math.isnan(summary["iou"][3])
    assert summary["iou"][:3] == pytest.approx(IOU, abs=1e-6)
    assert summary["miou"] == pytest.approx(MIOU, abs=1e-6)


def test_class_only_in_the_prediction_counts_as_zero() -> None:
    metric = segmentation_metric(3)
    metric.update(batch(PRED_1), batch(TARGET_1))  # class 2 predicted once, never true
    summary = summarize_iou(metric.compute())
    assert summary["iou"] == pytest.approx([6 / 9, 5 / 7, 0.0], abs=1e-6)
    assert summary["miou"] == pytest.approx((6 / 9 + 5 / 7) / 3, abs=1e-6)


def test_miou_from_confusion_matches_the_hand_count() -> None:
    iou, miou = miou_from_confusion(torch.tensor(CONFUSION))
    assert iou.tolist() == pytest.approx(IOU)
    assert miou == pytest.approx(MIOU)
    padded = torch.zeros(4, 4, dtype=torch.long)
    padded[:3, :3] = torch.tensor(CONFUSION)
    iou, miou = miou_from_confusion(padded)
    assert math.isnan(iou[3]) and miou == pytest.approx(MIOU)


def test_summarize_with_a_presence_mask() -> None:
    summary = summarize_iou(torch.tensor([0.5, 0.0, 1.0]), present=torch.tensor([True, False, True]))
    assert summary["miou"] == pytest.approx(0.75)
    assert math.isnan(summary["iou"][1])
    assert math.isnan(summarize_iou(torch.full((2,), float("nan")))["miou"])
