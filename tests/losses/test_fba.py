"""FBA-Net's fg/bg contrast against a naive loop and the released formulas; head, modes, consistency, ramp."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geocl.losses.fba import (
    ALPHA_MAX,
    ALPHA_MIN,
    SIMILARITY_RANGE,
    FBContrastLoss,
    FeaturePoolContrast,
    activation_map_size,
    clamped_cosine,
    class_region_contrast,
    consistency_weight,
    foreground_background_contrast,
    instance_foreground_contrast,
    mutual_consistency,
    rank_weights,
    sharpen,
    sharpen_classes,
    sigmoid_rampup,
    similarity_max_loss,
    similarity_min_loss,
)

LOW, HIGH = 5e-4, 0.9995


# --- references -----------------------------------------------------------------------


def naive_similarity(u: torch.Tensor, v: torch.Tensor) -> list[list[float]]:
    """Clamped cosine pair by pair, in float64 Python arithmetic."""
    rows = u.double().tolist()
    cols = v.double().tolist()
    matrix = []
    for a in rows:
        row = []
        for b in cols:
            dot = sum(x * y for x, y in zip(a, b, strict=False))
            norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
            cosine = dot / norm if norm > 0 else 0.0
            row.append(min(max(cosine, LOW), HIGH))
        matrix.append(row)
    return matrix


def naive_rank_loss(similarity: list[list[float]], alpha: float, push: bool) -> float:
    """mean_{m,n} exp(-alpha (r_mn - 1)) * -log(S or 1 - S), r_mn = position of n in row m sorted descending."""
    total, count = 0.0, 0
    for row in similarity:
        order = sorted(range(len(row)), key=lambda n: -row[n])  # stable: ties keep column order
        for position, n in enumerate(order):
            value = 1 - row[n] if push else row[n]
            total += math.exp(-alpha * (position - 1)) * -math.log(value)
            count += 1
    return total / count


def naive_lmax(u: torch.Tensor, alpha: float = ALPHA_MAX) -> float:
    return naive_rank_loss(naive_similarity(u, u), alpha, push=False)


def naive_lmin(u: torch.Tensor, v: torch.Tensor, alpha: float = ALPHA_MIN) -> float:
    return naive_rank_loss(naive_similarity(u, v), alpha, push=True)


def released_pair_loss(rows: torch.Tensor, cols: torch.Tensor, alpha: float, push: bool) -> torch.Tensor:
    """The released ``SimMaxLoss`` / ``SimMinLoss`` (``code/utils/losses.py``) as the spec quotes them.

    cos of L2-normalised rows and columns clamped to [5e-4, 0.9995]; elementwise
    -log(S) (pull) or -log(1 - S) (push), negatives set to 0; rank of each entry in its
    row by a descending sort, minus 1; weights exp(-alpha * rank); mean over all B x B
    entries, diagonal included.
    """
    similarity = torch.clamp(F.normalize(rows, dim=1) @ F.normalize(cols, dim=1).T, min=LOW, max=HIGH)
    loss = -torch.log(1 - similarity) if push else -torch.log(similarity)
    loss = torch.where(loss < 0, torch.zeros_like(loss), loss)
    _, indices = similarity.sort(descending=True, dim=1)
    _, rank = indices.sort(dim=1)
    return torch.mean(loss * torch.exp(-(rank - 1).float() * alpha))


def released_binary_contrast(fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """``max_loss(fg) + max_loss(bg) + min_loss(fg, bg)`` of ``train_fba.py`` (min_loss's rows: fg)."""
    return (
        released_pair_loss(fg, fg, 0.25, push=False)
        + released_pair_loss(bg, bg, 0.25, push=False)
        + released_pair_loss(fg, bg, 2.5, push=True)
    )


def released_multiclass_contrast(feat: torch.Tensor) -> torch.Tensor:
    """The per-class loop of ``train_2d.py``: pull class n, push it from every other class, / C(C-1)."""
    classes = feat.shape[1]
    total = torch.zeros(())
    for n in range(classes):
        pos = feat[:, n]
        neg = torch.stack([feat[:, i] for i in range(classes) if i != n], dim=1)
        total = total + released_pair_loss(pos, pos, 0.25, push=False)
        for other in range(neg.shape[1]):
            total = total + released_pair_loss(pos, neg[:, other], 2.5, push=True)
    return total / (classes * (classes - 1))


def _embeddings(*shape: int, seed: int = 0, relu: bool = True) -> torch.Tensor:
    values = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return values.relu() if relu else values


# --- the pull / push losses -------------------------------------------------------------


@pytest.mark.parametrize("relu", [True, False])
def test_lmax_and_lmin_equal_a_naive_loop_on_random_inputs(relu: bool) -> None:
    for seed in range(4):
        u, v = _embeddings(6, 9, seed=seed, relu=relu), _embeddings(6, 9, seed=seed + 10, relu=relu)
        assert float(similarity_max_loss(u)) == pytest.approx(naive_lmax(u), abs=1e-5)
        assert float(similarity_min_loss(u, v)) == pytest.approx(naive_lmin(u, v), abs=1e-5)
        assert float(foreground_background_contrast(u, v)) == pytest.approx(
            naive_lmax(u) + naive_lmax(v) + naive_lmin(u, v), abs=1e-5
        )


def test_multiclass_contrast_equals_a_naive_loop() -> None:
    embeddings = _embeddings(5, 4, 6, seed=3)
    expected = 0.0
    for n in range(4):
        expected += naive_lmax(embeddings[:, n])
        expected += sum(naive_lmin(embeddings[:, n], embeddings[:, m]) for m in range(4) if m != n)
    assert float(class_region_contrast(embeddings)) == pytest.approx(expected / 12, abs=1e-5)


def test_equals_the_released_formulas_at_the_spec_shapes() -> None:
    # 3D FBA-Net: fg, bg 4 x 128 after ReLU; 2D: 16 x 4 x 128
    fg, bg = _embeddings(4, 128, seed=1), _embeddings(4, 128, seed=2)
    torch.testing.assert_close(foreground_background_contrast(fg, bg), released_binary_contrast(fg, bg))
    feat = _embeddings(16, 4, 128, seed=3)
    torch.testing.assert_close(class_region_contrast(feat), released_multiclass_contrast(feat))
    # embeddings that hit both clamps: equal rows (cos 1 -> 0.9995), disjoint supports (cos 0 -> 5e-4)
    fg = torch.zeros(4, 128)
    fg[:, :64] = 1.0
    bg = torch.zeros(4, 128)
    bg[:2, 64:] = 1.0
    bg[2:, 64:] = torch.rand(2, 64)
    torch.testing.assert_close(foreground_background_contrast(fg, bg), released_binary_contrast(fg, bg))


def test_rank_weights_of_a_hand_built_similarity() -> None:
    similarity = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.4, 0.7, 0.6]])
    alpha = 0.5
    top, second, third = math.exp(alpha), 1.0, math.exp(-alpha)
    expected = torch.tensor([[top, second, third], [third, second, top], [third, top, second]])
    torch.testing.assert_close(rank_weights(similarity, alpha), expected)


def test_clamps_and_closed_forms() -> None:
    batch = 4

    def mean_weight(alpha: float) -> float:  # every row: weights exp(-alpha (k - 1)), k = 0..B-1
        return sum(math.exp(-alpha * (k - 1)) for k in range(batch)) / batch

    same = torch.ones(batch, 8)
    assert float(similarity_max_loss(same)) == pytest.approx(-math.log(HIGH) * mean_weight(ALPHA_MAX), rel=1e-4)
    push_floor = -math.log(1 - HIGH) * mean_weight(ALPHA_MIN)
    assert float(similarity_min_loss(same, same)) == pytest.approx(push_floor, rel=1e-4)
    fg, bg = torch.zeros(batch, 8), torch.zeros(batch, 8)
    fg[:, :4], bg[:, 4:] = 1.0, 1.0  # orthogonal, non-negative: every cosine 0 -> clamped to 5e-4
    assert float(similarity_min_loss(fg, bg)) == pytest.approx(-math.log(1 - LOW) * mean_weight(ALPHA_MIN), rel=1e-4)
    # a zero embedding (all-negative pre-ReLU) has cosine 5e-4 with everything, not NaN
    assert torch.all(clamped_cosine(torch.zeros(2, 3), torch.ones(2, 3)) == LOW)


def test_permutation_and_scale_invariance() -> None:
    fg, bg = _embeddings(6, 16, seed=4), _embeddings(6, 16, seed=5)
    loss = foreground_background_contrast(fg, bg)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(foreground_background_contrast(fg[order], bg[order]), loss)
    torch.testing.assert_close(foreground_background_contrast(3.0 * fg, 0.2 * bg), loss)
    feat = _embeddings(6, 3, 16, seed=6)
    torch.testing.assert_close(class_region_contrast(feat[order]), class_region_contrast(feat))


def test_no_gradient_flows_through_the_rank_weights() -> None:
    u = _embeddings(5, 7, seed=7).requires_grad_()
    similarity = clamped_cosine(u, u)
    assert not rank_weights(similarity, ALPHA_MAX).requires_grad
    (grad,) = torch.autograd.grad(similarity_max_loss(u), u)
    weights = rank_weights(similarity, ALPHA_MAX).clone()  # a plain constant
    (expected,) = torch.autograd.grad((weights * -torch.log(clamped_cosine(u, u))).mean(), u)
    torch.testing.assert_close(grad, expected)


# --- the head and the projections -----------------------------------------------------


def test_spec_shapes_through_the_head() -> None:
    loss3d = FBContrastLoss(2, 3, 128, "code", input_size=(112, 112, 80))
    activation = loss3d.activation_map(torch.randn(4, 2, 112, 112, 80))
    assert activation.shape == (4, 1, 56, 56, 40)
    assert loss3d.foreground.linear.in_features == 56 * 56 * 40 == 125_440
    assert loss3d.embed(activation).shape == (4, 2, 128)
    loss2d = FBContrastLoss(4, 2, 128, "code", input_size=(256, 256))
    activation = loss2d.activation_map(torch.randn(16, 4, 256, 256))
    assert activation.shape == (16, 4, 128, 128)
    assert loss2d.embed(activation).shape == (16, 4, 128)
    assert activation_map_size((7, 8)) == (4, 4)


def test_binary_head_and_projection_follow_the_code() -> None:
    torch.manual_seed(0)
    loss = FBContrastLoss(2, 2, 8, "code", input_size=(10, 12)).train()
    logits = torch.randn(3, 2, 10, 12)
    # a = sigmoid(BN(conv(z))) with the batch statistics (training), one channel
    conv = F.conv2d(logits, loss.head.conv.weight, stride=2, padding=1)
    mean, var = conv.mean((0, 2, 3), keepdim=True), conv.var((0, 2, 3), unbiased=False, keepdim=True)
    expected_map = torch.sigmoid((conv - mean) / torch.sqrt(var + loss.head.norm.eps))
    activation = loss.activation_map(logits)
    torch.testing.assert_close(activation, expected_map, atol=1e-5, rtol=1e-5)
    flat, values = activation.flatten(1), 5 * 6
    fg = F.relu(loss.foreground.linear(flat / values))
    bg = F.relu(loss.background.linear((1 - flat) / values))
    torch.testing.assert_close(loss.embed(activation), torch.stack([fg, bg], dim=1))
    torch.testing.assert_close(loss(logits), released_binary_contrast(fg, bg))


def test_multiclass_head_has_no_batchnorm_and_one_shared_unscaled_projection() -> None:
    torch.manual_seed(0)
    loss = FBContrastLoss(3, 2, 8, "code", input_size=(8, 8))
    logits = torch.randn(4, 3, 8, 8)
    activation = loss.activation_map(logits)
    torch.testing.assert_close(activation, torch.sigmoid(F.conv2d(logits, loss.head.conv.weight, stride=2, padding=1)))
    embeddings = loss.embed(activation)
    torch.testing.assert_close(embeddings, F.relu(loss.projection.linear(activation.flatten(2))))
    torch.testing.assert_close(loss(logits), released_multiclass_contrast(embeddings))


def test_the_activation_map_is_the_only_path_from_logits_to_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    loss = FBContrastLoss(2, 3, 16, "code", input_size=(8, 8, 8))
    logits = torch.randn(4, 2, 8, 8, 8, requires_grad=True)
    value = loss(logits)
    value.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert loss.head.conv.weight.grad is not None and loss.head.conv.weight.grad.abs().sum() > 0
    # the loss is a function of the map alone: the same map from other logits gives the same loss
    fixed = loss.activation_map(logits).detach()
    torch.testing.assert_close(loss.contrast(loss.embed(fixed)), value.detach())
    monkeypatch.setattr(loss, "activation_map", lambda _: fixed)
    other = torch.randn(4, 2, 8, 8, 8, requires_grad=True)
    again = loss(other)
    torch.testing.assert_close(again.detach(), value.detach())
    again.backward()
    assert other.grad is None  # no path from the logits that bypasses the map


def test_pooled_map_equals_code_mode_on_a_map_of_grid_size_and_takes_any_size() -> None:
    torch.manual_seed(0)
    code = FBContrastLoss(2, 2, 16, "code", input_size=(32, 32))
    pooled = FBContrastLoss(2, 2, 16, "pooled-map", grid=16)
    pooled.load_state_dict(code.state_dict())
    logits = torch.randn(4, 2, 32, 32)
    torch.testing.assert_close(pooled(logits), code(logits))
    tiles = FBContrastLoss(2, 2, 128, "pooled-map")  # 32 x 32 grid
    for side in (256, 512):
        embeddings = tiles.embed(tiles.activation_map(torch.randn(2, 2, side, side)))
        assert embeddings.shape == (2, 2, 128)
    volumes = FBContrastLoss(4, 3, 32, "pooled-map")  # 16^3 grid
    assert volumes.embed(volumes.activation_map(torch.randn(2, 4, 40, 24, 24))).shape == (2, 4, 32)


def test_code_mode_refuses_other_sizes_and_bad_settings() -> None:
    code = FBContrastLoss(2, 2, 8, "code", input_size=(16, 16))
    with pytest.raises(ValueError, match="pooled-map"):
        code(torch.randn(2, 2, 32, 32))
    with pytest.raises(ValueError, match="input_size"):
        FBContrastLoss(2, 3, 8, "code")
    with pytest.raises(ValueError, match="at least 2 classes"):
        FBContrastLoss(1, 2, 8, "pooled-map")
    with pytest.raises(ValueError, match="unknown contrast mode"):
        FBContrastLoss(2, 2, 8, "feature-pool")  # type: ignore[arg-type]


# --- consistency, sharpening, ramp ------------------------------------------------------


def test_sharpen_values() -> None:
    assert float(sharpen(torch.tensor(0.5))) == pytest.approx(0.5)
    assert float(sharpen(torch.tensor(0.6))) == pytest.approx(0.6**10 / (0.6**10 + 0.4**10))
    assert float(sharpen(torch.tensor(0.6))) == pytest.approx(0.983, abs=5e-4)
    p = torch.rand(100, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sharpen(1 - p), 1 - sharpen(p))
    assert float(sharpen(torch.tensor(0.6), temperature=1.0)) == pytest.approx(0.6)


def test_mutual_consistency_equals_the_pairwise_formula() -> None:
    generator = torch.Generator().manual_seed(1)
    probabilities = [torch.softmax(torch.randn(3, 2, 4, 4, 4, generator=generator), dim=1) for _ in range(3)]
    expected = 0.0
    for i in range(3):
        for j in range(3):
            if i != j:
                p, q = probabilities[i].double(), probabilities[j].double()
                s = q**10 / (q**10 + (1 - q) ** 10)
                expected += float(((p - s) ** 2).mean())
    assert float(mutual_consistency(probabilities)) == pytest.approx(expected, rel=1e-5)
    assert float(mutual_consistency(probabilities[:1])) == 0.0


def test_consistency_is_zero_for_agreeing_one_hot_decoders_and_targets_carry_gradient() -> None:
    one_hot = F.one_hot(torch.randint(0, 2, (2, 5, 5)), 2).movedim(-1, 1).float()
    near = one_hot * 0.999 + 0.0005
    # sharpening takes 0.9995 to ~1: each of the 6 pairs is off by 5e-4 everywhere
    assert float(mutual_consistency([near, near.clone(), near.clone()])) == pytest.approx(6 * 0.0005**2, rel=1e-3)
    logits = [torch.randn(2, 2, 5, 5, requires_grad=True) for _ in range(2)]
    probabilities = [torch.softmax(z, dim=1) for z in logits]
    # the term of pair (0, 1) reaches decoder 1 through its sharpened target unless detached
    (kept,) = torch.autograd.grad(mutual_consistency(probabilities), logits[1], retain_graph=True)
    (detached,) = torch.autograd.grad(mutual_consistency(probabilities, detach_targets=True), logits[1])
    assert not torch.allclose(kept, detached)


def test_sigmoid_ramp_follows_the_released_schedule() -> None:
    assert consistency_weight(0) == pytest.approx(math.exp(-5.0)) == pytest.approx(0.0067, abs=1e-4)
    assert consistency_weight(6000) == 1.0 and consistency_weight(10**6) == 1.0
    for iteration in (1, 149, 150, 1499, 3000, 5999):
        units = min(iteration // 150, 40)
        assert consistency_weight(iteration) == pytest.approx(math.exp(-5 * (1 - units / 40) ** 2))
    assert consistency_weight(3000, weight=2.0) == pytest.approx(2 * math.exp(-1.25))
    assert sigmoid_rampup(5, 0) == 1.0


# --- the stable variant, class sharpening, the feature-pool contrast ---------------------


def _train_head_alone(loss: torch.nn.Module, logits: torch.Tensor, steps: int) -> list[float]:
    """SGD (lr 0.01, momentum 0.9, as released) on the contrast module's own weights, the logits fixed."""
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.01, momentum=0.9)
    values = []
    for _ in range(steps):
        value = loss(logits)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(float(value.detach()))
    return values


@pytest.mark.parametrize(("spatial_dims", "size"), [(3, (16, 16, 16)), (2, (32, 32))])
def test_the_released_binary_head_collapses_to_its_floor_and_the_stable_one_does_not(
    spatial_dims: int, size: tuple[int, ...]
) -> None:
    # the logits do not move: the released head satisfies its term by its biases alone (the collapse)
    torch.manual_seed(0)
    logits = torch.randn(4, 2, *size)
    floors = {}
    for variant in ("released", "stable"):
        torch.manual_seed(1)
        loss = FBContrastLoss(2, spatial_dims, 32, "code", input_size=size, variant=variant)
        values = _train_head_alone(loss, logits, 5)
        floors[variant] = (values, loss.floor())
    released, floor = floors["released"]
    assert released[-1] == pytest.approx(floor, rel=1e-3)  # at the clamp floor after 5 steps: no gradient left
    stable, _ = floors["stable"]
    assert min(stable) > 10 * floor


def test_the_floor_is_every_clamp_at_its_bound() -> None:
    loss = FBContrastLoss(2, 2, 8, "pooled-map", grid=4)
    loss(torch.randn(5, 2, 8, 8))
    weights_max = sum(math.exp(-ALPHA_MAX * (r - 1)) for r in range(5)) / 5
    weights_min = sum(math.exp(-ALPHA_MIN * (r - 1)) for r in range(5)) / 5
    expected = -math.log(SIMILARITY_RANGE[1]) * 2 * weights_max - math.log(1 - SIMILARITY_RANGE[0]) * weights_min
    assert loss.floor() == pytest.approx(expected)
    fg = torch.tensor([[1.0, 0.0]] * 5)  # all fg parallel, every bg orthogonal to them
    bg = torch.tensor([[0.0, 1.0]] * 5)
    assert float(foreground_background_contrast(fg, bg)) == pytest.approx(expected, rel=1e-3)  # float32 logs


def test_the_stable_projection_is_shared_and_bias_free() -> None:
    loss = FBContrastLoss(2, 2, 8, "pooled-map", grid=4, variant="stable")
    assert loss.projection.linear.bias is None and not hasattr(loss, "foreground")
    # a map of 0.5 everywhere: fg = bg exactly, so the push term sits at its largest value
    fg, bg = loss.embed(torch.full((3, 1, 4, 4), 0.5)).unbind(1)
    torch.testing.assert_close(fg, bg)
    multi = FBContrastLoss(4, 2, 8, "pooled-map", grid=4, variant="stable")
    assert multi.projection.linear.bias is None
    with pytest.raises(ValueError, match="variant"):
        FBContrastLoss(2, 2, 8, "pooled-map", variant="other")  # type: ignore[arg-type]


def test_class_sharpening_is_the_released_one_for_two_classes_and_a_distribution_beyond() -> None:
    torch.manual_seed(0)
    binary = torch.softmax(torch.randn(2, 2, 5, 5), dim=1)
    torch.testing.assert_close(sharpen_classes(binary, 0.1), sharpen(binary, 0.1))
    multi = torch.softmax(torch.randn(2, 5, 4, 4), dim=1)
    sharpened = sharpen_classes(multi, 0.1)
    torch.testing.assert_close(sharpened.sum(1), torch.ones(2, 4, 4))
    power = multi**10
    torch.testing.assert_close(sharpened, power / power.sum(1, keepdim=True))  # the formula, naively
    assert (sharpened.argmax(1) == multi.argmax(1)).all()
    # per-channel sharpening of an uncertain pixel (all p < 0.5): every target near 0, no distribution
    assert float(sharpen(multi, 0.1).sum(1).min()) < 0.5
    consistency = mutual_consistency([multi, multi.flip(0)], sharpening="classes")
    expected = ((multi - sharpened.flip(0)) ** 2).mean() + ((multi.flip(0) - sharpened) ** 2).mean()
    torch.testing.assert_close(consistency, expected)


def test_feature_pool_contrast_pools_features_under_the_map_and_its_complement() -> None:
    torch.manual_seed(0)
    features = torch.rand(3, 4, 2, 3)
    activation = torch.rand(3, 1, 2, 3)
    fg, bg = FeaturePoolContrast.pool(features, activation)
    for b in range(3):  # naive weighted means
        weights = activation[b, 0].flatten()
        values = features[b].flatten(1)
        torch.testing.assert_close(fg[b], (values * weights).sum(1) / weights.sum())
        torch.testing.assert_close(bg[b], (values * (1 - weights)).sum(1) / (1 - weights).sum())
    loss = FeaturePoolContrast(4, 8)
    assert loss.projection.bias is None
    value = loss(torch.rand(4, 4, 3, 3))
    value.backward()
    assert value.ndim == 0 and loss.head[0].weight.grad is not None


def test_feature_pool_contrast_is_largest_for_collapsed_features_or_maps() -> None:
    # constant features over each image: fg = bg whatever the map, the push term at its ceiling
    torch.manual_seed(0)
    loss = FeaturePoolContrast(4, 8)
    constant = torch.rand(1, 4, 1, 1).expand(4, 4, 3, 3).contiguous()  # a collapsed encoder
    with torch.no_grad():
        fg, bg, _ = loss.embed(constant)
    torch.testing.assert_close(fg, bg)
    ceiling = float(similarity_min_loss(fg, bg))
    assert ceiling == pytest.approx(
        -math.log(1 - HIGH) * float(rank_weights(torch.zeros(4, 4), ALPHA_MIN).mean()), rel=1e-4
    )
    # features that differ inside each image in the same way: the contrast can fall below it
    split = torch.zeros(4, 4, 3, 3)
    split[:, :2, :, :2] = 1.0
    split[:, 2:, :, 2:] = 1.0
    fg_split, bg_split = FeaturePoolContrast.pool(split, (split[:, :1] > 0).float())
    assert float(clamped_cosine(fg_split, bg_split).max()) == pytest.approx(LOW)


def test_instance_foreground_contrast_equals_a_loop_over_the_views() -> None:
    torch.manual_seed(0)
    foreground, background = torch.randn(6, 5), torch.randn(6, 5)  # 3 tiles: views 0-2, then 3-5
    temperature = 0.2

    def cos(u: torch.Tensor, v: torch.Tensor) -> float:
        return float(torch.dot(u, v) / (u.norm() * v.norm()))

    total = 0.0
    for i in range(6):
        partner = (i + 3) % 6
        denominator = sum(math.exp(cos(foreground[i], foreground[k]) / temperature) for k in range(6) if k != i)
        denominator += sum(math.exp(cos(foreground[i], background[k]) / temperature) for k in range(6))
        total += -math.log(math.exp(cos(foreground[i], foreground[partner]) / temperature) / denominator)
    loss = instance_foreground_contrast(foreground, background, temperature)
    assert float(loss) == pytest.approx(total / 6, rel=1e-5)


def test_instance_foreground_contrast_rewards_a_split_and_needs_both_views() -> None:
    torch.manual_seed(1)
    tiles = torch.randn(4, 8)
    foreground = torch.cat([tiles, tiles + 0.01 * torch.randn(4, 8)])  # each tile's views agree
    split = instance_foreground_contrast(foreground, -foreground)  # backgrounds unlike any foreground
    uniform = instance_foreground_contrast(foreground, foreground)  # no split: bg = fg
    assert float(split) < float(uniform)
    with pytest.raises(ValueError, match="two views of each tile"):
        instance_foreground_contrast(torch.randn(5, 8), torch.randn(5, 8))
