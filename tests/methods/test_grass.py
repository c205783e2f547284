"""GraSS's guide pass against full autograd, its gradient bookkeeping, and the box areas it reports."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import geocl.methods  # noqa: F401  (registers the methods)
import geocl.methods.grass as grass
from geocl.errors import GeoclError
from geocl.methods import GraSS, build_method, load_recipe
from geocl.sampling.regions import crop_and_resize
from geocl.training.pretrain import run_pretrain
from tests.conftest import write_recipe

BAND_STATS = {"mean": [0.0] * 4, "std": [1.0] * 4}


def _grass(tmp_path: Path, **method: object) -> GraSS:
    params = {"name": "grass", "hidden_dim": 16, "output_dim": 8, **method}
    recipe = load_recipe(write_recipe(tmp_path, tmp_path / "tiles", params))
    torch.manual_seed(0)
    return build_method(recipe, 4, BAND_STATS)


def _views(n: int = 6, size: int = 64) -> torch.Tensor:
    return torch.randn(2 * n, 4, size, size, generator=torch.Generator().manual_seed(1))


def _reference(model: GraSS, views: torch.Tensor, layer: torch.nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dA by a plain full backward with the map tensor's .grad retained."""
    captured: list[torch.Tensor] = []
    handle = None
    if layer is not None:
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out) or out.retain_grad())
    features = model.encoder.feature_map(views)
    if layer is None:
        features.retain_grad()
        captured.append(features)
    embeddings = model.head(model.encoder.pool(features))
    n = len(views) // 2
    model.criterion(embeddings[:n], embeddings[n:]).backward()
    if handle is not None:
        handle.remove()
    model.zero_grad()
    return captured[0].detach(), captured[0].grad


@pytest.mark.parametrize("layer", ["", "layer3"])
def test_guide_gradient_equals_full_backward(tmp_path: Path, layer: str) -> None:
    model = _grass(tmp_path, layer=layer)
    model.eval()  # fixed BatchNorm statistics, so both passes see the same network
    views = _views()
    features, gradients = model.guide(views)
    reference_features, reference_gradients = _reference(model, views, model.gradient_layer)
    torch.testing.assert_close(features, reference_features)
    torch.testing.assert_close(gradients, reference_gradients, atol=1e-7, rtol=1e-5)
    assert gradients.abs().sum() > 0


def test_guide_pass_leaves_no_parameter_gradient_and_step_gradients_come_from_the_crops(tmp_path: Path) -> None:
    model = _grass(tmp_path)
    model.eval()
    views = _views()
    cropped, boxes = model.sample_regions(views)
    assert all(p.grad is None for p in model.parameters()), "the guide pass must not touch .grad"
    assert cropped.shape == views.shape and any(box is not None for box in boxes)
    n = len(views) // 2
    model.contrast(cropped[:n], cropped[n:]).backward()
    from_step = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.contrast(cropped[:n].clone(), cropped[n:].clone()).backward()  # L on X' alone
    alone = [p.grad for p in model.parameters() if p.grad is not None]
    for a, b in zip(from_step, alone, strict=True):
        torch.testing.assert_close(a, b)


def test_tile_region_maps_have_tile_shape_and_keep_train_mode(tmp_path: Path) -> None:
    model = _grass(tmp_path)
    model.train()
    running = model.encoder.body.bn1.running_mean.clone()
    maps = model.tile_region_maps(torch.randn(3, 4, 48, 48))
    assert maps.shape == (3, 48, 48) and torch.isfinite(maps).all()
    assert model.training
    torch.testing.assert_close(model.encoder.body.bn1.running_mean, running)  # eval-mode guide pass


def test_bad_grass_parameters_name_their_key(tmp_path: Path) -> None:
    with pytest.raises(GeoclError, match="method.layer"):
        _grass(tmp_path, layer="layer9")
    with pytest.raises(GeoclError, match="method.stage2_sampling"):
        _grass(tmp_path / "b", stage2_sampling="offline")
    with pytest.raises(GeoclError, match="method.box_placement") as caught:
        _grass(tmp_path / "c", box_placement="random", stage2_sampling="geo")
    assert "use stage2_sampling 'online'" in str(caught.value)


def test_random_placement_keeps_each_gradient_box_size_and_moves_it(tmp_path: Path) -> None:
    gradient = _grass(tmp_path / "a", layer="layer1")  # a fine map: boxes smaller than the view
    moved = _grass(tmp_path / "b", layer="layer1", box_placement="random")
    for model in (gradient, moved):
        model.eval()
    views = _views()
    _, boxes = gradient.sample_regions(views)
    torch.manual_seed(0)
    cropped, placed = moved.sample_regions(views)
    sizes = [None if b is None else (b[1] - b[0], b[3] - b[2]) for b in boxes]
    assert sizes == [None if b is None else (b[1] - b[0], b[3] - b[2]) for b in placed]
    assert placed != boxes and any(b is not None and b[1] - b[0] < views.shape[-2] for b in boxes)
    torch.testing.assert_close(cropped, crop_and_resize(views, placed))


def test_a_gradient_layer_is_not_saved_twice_and_checkpoints_load_across_layers(tmp_path: Path) -> None:
    last = _grass(tmp_path / "a")
    deeper = _grass(tmp_path / "b", layer="layer3")
    assert deeper.gradient_layer is deeper.encoder.body.layer3
    # the layer's weights live under encoder.* only: same keys as with the last feature map
    assert list(deeper.state_dict()) == list(last.state_dict())
    deeper.load_state_dict(last.state_dict())  # strict
    torch.testing.assert_close(deeper.encoder.body.layer3[0].conv1.weight, last.encoder.body.layer3[0].conv1.weight)


def test_box_area_is_the_mean_fraction_of_the_view_with_whole_views_counting_one() -> None:
    boxes = [(0, 10, 0, 20), None, (5, 25, 10, 30)]  # 200 px, whole view, 400 px of a 20 x 40 view
    assert grass.box_area(boxes, (20, 40)) == pytest.approx((200 / 800 + 1.0 + 400 / 800) / 3)


def test_each_stage2_epoch_logs_the_mean_area_of_the_boxes_it_cropped_and_draws_them(
    tmp_path: Path, tiny_tiles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    areas: dict[int, list[float]] = {}
    real = GraSS.sample_regions

    def recording(self: GraSS, views: torch.Tensor) -> tuple[torch.Tensor, list]:  # type: ignore[type-arg]
        cropped, boxes = real(self, views)
        size = views.shape[-1] * views.shape[-2]
        epoch = areas.setdefault(self.current_epoch, [])
        epoch.extend(1.0 if box is None else (box[1] - box[0]) * (box[3] - box[2]) / size for box in boxes)
        return cropped, boxes

    monkeypatch.setattr(GraSS, "sample_regions", recording)
    method = {"name": "grass", "warmup_epochs": 1, "hidden_dim": 16, "output_dim": 8, "map_tiles": 0}
    recipe = load_recipe(
        write_recipe(tmp_path, tiny_tiles, method, trainer={"max_epochs": 3, "limit_train_batches": 2})
    )
    run = run_pretrain(recipe).out
    logged = pd.concat(pd.read_csv(path) for path in (run / "logs").glob("version_*/metrics.csv"))
    logged = logged.dropna(subset=["train/box_area"]).set_index("epoch")["train/box_area"]
    assert sorted(areas) == [1, 2] and sorted(logged.index) == [1, 2]  # none in the warm-up epoch
    for epoch, values in areas.items():
        # every batch has the same size, so the epoch's weighted mean is the plain mean
        assert logged[epoch] == pytest.approx(sum(values) / len(values), rel=1e-6)
    assert (run / "plots" / "box_area.png").read_bytes()[:4] == b"\x89PNG"
