"""Learning curves of a budget sweep against hand computations: curve points, plot, gains per budget step."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

import geocl.report.budgets as budgets
from geocl.report.budgets import budget_curves, budget_gains, budget_gains_markdown


def _sweep_summary(step_zero: bool = True) -> pd.DataFrame:
    """results_summary.csv of a sweep as compare writes it: random-init in every group, alone at budget 0."""
    random = {"recipe": "random-init", "label_fraction": 0.5, "mean": 0.20, "low": 0.18, "high": 0.22, "n": 4}
    rows = [{**random, "pretrain_steps": 0}] if step_zero else []
    for steps, gain in ((100, 0.05), (300, 0.10)):
        rows += [
            {**random, "pretrain_steps": steps},  # the same row again, shown in every budget's section
            {
                "recipe": "simclr",
                "label_fraction": 0.5,
                "mean": 0.20 + gain,
                "low": 0.19 + gain,
                "high": 0.21 + gain,
                "n": 4,
                "pretrain_steps": steps,
            },
            {
                "recipe": "vit",
                "label_fraction": 0.5,
                "mean": 0.3,
                "low": 0.25,
                "high": 0.35,
                "n": 4,
                "pretrain_steps": steps,
            },
        ]
    return pd.DataFrame(rows).assign(evaluation="frozen")


def test_budget_curves_start_at_the_random_init_row() -> None:
    curves = budget_curves(_sweep_summary(), from_step_zero={"simclr"})
    # random-init once, at step 0, whatever the number of sections that show it
    random = curves[curves["recipe"] == "random-init"]
    assert random["pretrain_steps"].tolist() == [0] and random["mean"].tolist() == [0.20]
    simclr = curves[curves["recipe"] == "simclr"]
    assert simclr["pretrain_steps"].tolist() == [0, 100, 300]
    assert simclr[["mean", "low", "high", "n"]].iloc[0].tolist() == [0.20, 0.18, 0.22, 4]  # the random-init row's
    assert simclr["mean"].tolist() == pytest.approx([0.20, 0.25, 0.30])
    # a recipe with another encoder does not start at random init
    assert curves[curves["recipe"] == "vit"]["pretrain_steps"].tolist() == [100, 300]
    counts = budget_curves(_sweep_summary())["recipe"].value_counts().to_dict()
    assert counts == {"simclr": 3, "vit": 3, "random-init": 1}
    # without budget 0: random-init is a level without steps, no curve starts there
    level = budget_curves(_sweep_summary(step_zero=False))
    assert level[level["recipe"] == "random-init"]["pretrain_steps"].isna().all()
    assert level[level["recipe"] == "simclr"]["pretrain_steps"].tolist() == [100, 300]


def test_plot_budgets_draws_each_curve_from_step_zero(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from geocl.report.columns import MetricColumns

    frozen = MetricColumns("frozen", ("miou",), title="Frozen-encoder mIoU", axis_label="test mIoU (linear probe)")

    figures = []
    monkeypatch.setattr(budgets, "save_figure", lambda figure, path: figures.append(figure) or path)
    budgets.plot_budgets(_sweep_summary(), tmp_path / "budget.png", [frozen], from_step_zero={"simclr"})
    (axes,) = figures[0].axes
    assert axes.get_title() == "Frozen-encoder mIoU at label fraction 0.5, frozen protocol"
    assert axes.get_ylabel() == "test mIoU (linear probe)"
    # each errorbar: (data line, caps, bars); its line holds the points drawn
    drawn = {curve.get_label(): curve.lines[0].get_xdata().tolist() for curve in axes.containers}
    assert drawn == {"simclr": [0, 100, 300], "vit": [100, 300], "random-init (step 0)": [0]}
    assert axes.get_xscale() == "symlog" and [tick.get_text() for tick in axes.get_xticklabels()] == ["0", "100", "300"]
    figures.clear()
    budgets.plot_budgets(_sweep_summary(step_zero=False), tmp_path / "budget.png", [frozen])
    (axes,) = figures[0].axes
    assert axes.get_xscale() == "log" and len(axes.patches) == 1  # random-init: a band
    # a real file too
    monkeypatch.undo()
    png = budgets.plot_budgets(_sweep_summary(), tmp_path / "budget.png", [frozen])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _sweep_rows() -> pd.DataFrame:
    """Six (subset, seed) pairs; random init at step 0, alpha at 100 and 300 steps, beta at 300 only."""
    rows = []
    for subset, seed in itertools.product(range(3), range(2)):
        pair = subset * 2 + seed
        base = 0.3 + 0.01 * pair  # what the subset and seed do to every encoder
        rows.append(("random-init", 0, subset, seed, base, "ok"))
        rows.append(("alpha", 100, subset, seed, base + 0.05 + 0.001 * pair, "ok"))  # +0.05..0.055
        # 100 -> 300: +0.01 on odd pairs, -0.01 on even ones: no gain on average
        rows.append(("alpha", 300, subset, seed, base + 0.05 + 0.001 * pair + (0.01 if pair % 2 else -0.01), "ok"))
        rows.append(("beta", 300, subset, seed, base - 0.02, "ok" if pair else "failed: boom"))
    return pd.DataFrame(rows, columns=["recipe", "pretrain_steps", "subset_seed", "seed", "miou", "status"]).assign(
        label_fraction=0.05
    )


def test_budget_gains_pair_each_budget_with_the_one_before() -> None:
    gains = budget_gains(_sweep_rows(), "miou")
    assert gains[["recipe", "from_steps", "to_steps"]].values.tolist() == [
        ["alpha", 0, 100],
        ["alpha", 100, 300],
        ["beta", 0, 300],
    ]
    first, second, beta = (gains.iloc[i] for i in range(3))
    # by hand: 0.05 + 0.001 x (0..5) over the six pairs
    assert first["delta"] == pytest.approx(0.05 + 0.001 * 2.5) and first["pairs"] == 6
    assert first["wins"] == 6 and first["verdict"] == "still rising"
    assert first["delta_low"] == pytest.approx(0.05 + 0.001 * 0.5, abs=1e-3)  # the bootstrap keeps within the data
    assert second["delta"] == pytest.approx(0.0) and (second["wins"], second["losses"]) == (3, 3)
    assert second["verdict"] == "no gain detected" and second["delta_low"] < 0 < second["delta_high"]
    assert beta["delta"] == pytest.approx(-0.02) and beta["pairs"] == 5  # its failed run pairs with nothing
    assert beta["verdict"] == "too few pairs"


def test_budget_gains_start_at_the_first_budget_for_recipes_not_from_step_zero() -> None:
    gains = budget_gains(_sweep_rows(), "miou", from_step_zero={"beta"})
    assert gains[["recipe", "from_steps", "to_steps"]].values.tolist() == [["alpha", 100, 300], ["beta", 0, 300]]
    markdown = budget_gains_markdown(gains, "mIoU")
    assert "| alpha | 0.05 | 100 → 300 | +0.000 [" in markdown and "| 3 / 3 of 6 | no gain detected |" in markdown


def test_budget_gains_resample_the_pretrainings_when_there_are_several() -> None:
    # seed s read pretraining s mod 2; alpha's 100 -> 300 step lost 0.01 on pretraining 0 and gained it on 1
    gains = budget_gains(_sweep_rows(), "miou", pretrain_seeds={"alpha": 2, "beta": 2}).set_index(
        ["recipe", "from_steps"]
    )
    step = gains.loc[("alpha", 100)]
    assert [float(value) for value in step["by_pretraining"].split()] == pytest.approx([-0.01, 0.01])
    # Student's t over the two values: 0 +- t(0.975, 1) * 0.0141421 / sqrt(2) = 0 +- 0.127062
    assert (step["delta"], step["delta_low"], step["delta_high"]) == pytest.approx((0.0, -0.127062, 0.127062), abs=1e-6)
    assert gains.loc[("alpha", 0)]["by_pretraining"] != ""  # its pairs with random init: clustered too
    assert budget_gains(_sweep_rows(), "miou")["by_pretraining"].eq("").all()  # one pretraining: none listed
    clustered = budget_gains_markdown(gains.reset_index(), "mIoU")
    assert "(per pretraining -0.010, +0.010)" in clustered and "Student's t interval over those values" in clustered
    assert "per pretraining" not in budget_gains_markdown(budget_gains(_sweep_rows(), "miou"), "mIoU")
