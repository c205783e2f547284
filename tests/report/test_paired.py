"""Paired statistics against hand computations: t intervals, bootstrap intervals, pairing, verdicts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from geocl.report.paired import (
    budget_gains,
    budget_gains_markdown,
    mean_interval,
    paired_difference,
    paired_markdown,
    paired_summary,
)


def test_mean_interval_is_students_t() -> None:
    # s = 0.1, t(0.975, 2) = 4.302653 (tables), half width = 4.302653 * 0.1 / sqrt(3) = 0.248414
    cell = mean_interval([0.4, 0.5, 0.6])
    assert cell.mean == pytest.approx(0.5)
    assert cell.low == pytest.approx(0.5 - 0.248414, abs=1e-6) and cell.high == pytest.approx(0.5 + 0.248414, abs=1e-6)
    single = mean_interval([0.3])
    assert single.mean == 0.3 and math.isnan(single.low) and single.n == 1


def test_two_pairs_give_the_interval_between_them() -> None:
    # resample means of (a, b): a (1/4), (a+b)/2 (1/2), b (1/4): the 2.5 % and 97.5 % points are a and b
    diff = paired_difference([0.01, 0.05])
    assert (diff.low, diff.high) == pytest.approx((0.01, 0.05))
    assert diff.mean == pytest.approx(0.03) and diff.wins == 2 and diff.losses == 0
    # the interval excludes 0, but two pairs share a sign by chance half the time: no verdict
    assert diff.excludes_zero and not diff.distinguishable and diff.verdict == "too few pairs"


def test_a_verdict_needs_six_pairs_of_one_sign() -> None:
    # all n pairs positive with no real difference: probability 2 * 0.5**n (0.0625 for 5, 0.03125 for 6)
    five, six = (
        paired_difference([0.01, 0.02, 0.03, 0.04, 0.05]),
        paired_difference([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]),
    )
    assert five.low > 0 and five.verdict == "too few pairs"
    assert six.low > 0 and six.distinguishable and six.verdict == "better"
    assert paired_difference([-x for x in (0.01, 0.02, 0.03, 0.04, 0.05, 0.06)]).verdict == "worse"


def test_bootstrap_interval_matches_the_exact_resampling_distribution() -> None:
    data = [-0.02, 0.01, 0.03, 0.10]
    exact = sorted(np.mean(sample) for sample in itertools.product(data, repeat=len(data)))  # 256 resamples
    diff = paired_difference(data)
    # the Monte Carlo percentile lies between the exact distribution's neighbouring values
    for bound, q in ((diff.low, 0.025), (diff.high, 0.975)):
        lower, upper = np.quantile(exact, q, method="lower"), np.quantile(exact, q, method="higher")
        assert lower - 1e-12 <= bound <= upper + 1e-12
    assert diff.covers_zero and diff.verdict == "not distinguishable"  # -0.02 .. 0.10 straddles 0


def test_identical_and_single_pairs() -> None:
    same = paired_difference([0.02, 0.02, 0.02])
    assert (same.low, same.high) == (0.02, 0.02) and same.excludes_zero and same.verdict == "too few pairs"
    one = paired_difference([0.5])
    # one pair has no interval at all: nothing was tested, so no verdict either way
    assert math.isnan(one.low) and not one.distinguishable and one.verdict == "too few pairs"
    assert paired_difference([]).verdict == "no pairs"


def _results() -> pd.DataFrame:
    rows = []
    for subset_seed, seed in itertools.product(range(2), range(2)):
        base = 0.40 + 0.05 * subset_seed + 0.02 * seed  # the subset and the seed move both recipes alike
        rows.append(
            {
                "recipe": "simclr",
                "label_fraction": 0.05,
                "subset_seed": subset_seed,
                "seed": seed,
                "miou": base,
                "status": "ok",
            }
        )
        rows.append(
            {
                "recipe": "grass",
                "label_fraction": 0.05,
                "subset_seed": subset_seed,
                "seed": seed,
                "miou": base + 0.01 + 0.001 * seed,
                "status": "ok",
            }
        )
        rows.append(
            {
                "recipe": "random-init",
                "label_fraction": 0.05,
                "subset_seed": subset_seed,
                "seed": seed,
                "miou": base + (0.03 if seed else -0.03),
                "status": "ok",
            }
        )
    frame = pd.DataFrame(rows)
    frame.loc[(frame["recipe"] == "grass") & (frame["subset_seed"] == 1) & (frame["seed"] == 1), "status"] = "failed: x"
    return frame


def test_paired_summary_pairs_runs_by_subset_and_seed() -> None:
    summary = paired_summary(_results(), "miou", baseline="simclr").set_index("recipe")
    grass = summary.loc["grass"]
    # three pairs left (one grass run failed): differences 0.010, 0.011, 0.010
    assert grass["pairs"] == 3 and grass["delta"] == pytest.approx((0.010 + 0.011 + 0.010) / 3)
    assert grass["verdict"] == "too few pairs" and grass["wins"] == 3 and grass["delta_low"] > 0
    # unpaired, grass's spread (0.40 .. 0.47) would hide that difference entirely
    assert grass["low"] < summary.loc["simclr"]["mean"] < grass["high"]
    noisy = summary.loc["random-init"]
    assert noisy["delta"] == pytest.approx(0.0) and noisy["verdict"] == "not distinguishable"
    assert (noisy["wins"], noisy["losses"]) == (2, 2)
    assert math.isnan(summary.loc["simclr"]["delta"])


def test_paired_markdown_labels_the_baseline_and_the_verdicts() -> None:
    text = paired_markdown(paired_summary(_results(), "miou", "simclr"), "mIoU", "simclr")
    assert "| simclr | 0.05 |" in text and "(baseline)" in text
    assert "| grass | 0.05 |" in text and "3 / 0 of 3 | too few pairs |" in text
    assert "not distinguishable" in text


def test_plot_paired_writes_a_png(tmp_path) -> None:
    from geocl.report.paired import plot_paired

    png = plot_paired(paired_summary(_results(), "miou", "simclr"), tmp_path / "paired.png", "mIoU", "simclr")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_on_every_label_are_one_subset_whatever_their_subset_seed() -> None:
    # fraction 1.0 with 6 subset seeds and one training seed: six copies of one run, not six pairs
    rows = [
        {"recipe": recipe, "label_fraction": 1.0, "subset_seed": subset_seed, "seed": 0, "miou": value, "status": "ok"}
        for subset_seed in range(6)
        for recipe, value in (("simclr", 0.500), ("grass", 0.505))
    ]
    summary = paired_summary(pd.DataFrame(rows), "miou", baseline="simclr").set_index("recipe")
    grass = summary.loc["grass"]
    assert grass["pairs"] == 1 and grass["n"] == 1 and grass["verdict"] == "too few pairs"
    assert grass["delta"] == pytest.approx(0.005)
    # distinct training seeds on all labels stay distinct pairs; a fraction below 1 keeps its subset seeds
    seeds = [{**row, "seed": row["subset_seed"], "subset_seed": 0} for row in rows]
    assert paired_summary(pd.DataFrame(seeds), "miou", "simclr").set_index("recipe").loc["grass", "pairs"] == 6
    partial = [{**row, "label_fraction": 0.5} for row in rows]
    assert paired_summary(pd.DataFrame(partial), "miou", "simclr").set_index("recipe").loc["grass", "pairs"] == 6


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
    from geocl.report.paired import budget_curves

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
    import geocl.report.paired as paired
    from geocl.report.columns import MetricColumns

    frozen = MetricColumns("frozen", ("miou",), title="Frozen-encoder mIoU", axis_label="test mIoU (linear probe)")

    figures = []
    monkeypatch.setattr(paired, "save_figure", lambda figure, path: figures.append(figure) or path)
    paired.plot_budgets(_sweep_summary(), tmp_path / "budget.png", [frozen], from_step_zero={"simclr"})
    (axes,) = figures[0].axes
    assert axes.get_title() == "Frozen-encoder mIoU at label fraction 0.5, frozen protocol"
    assert axes.get_ylabel() == "test mIoU (linear probe)"
    # each errorbar: (data line, caps, bars); its line holds the points drawn
    drawn = {curve.get_label(): curve.lines[0].get_xdata().tolist() for curve in axes.containers}
    assert drawn == {"simclr": [0, 100, 300], "vit": [100, 300], "random-init (step 0)": [0]}
    assert axes.get_xscale() == "symlog" and [tick.get_text() for tick in axes.get_xticklabels()] == ["0", "100", "300"]
    figures.clear()
    paired.plot_budgets(_sweep_summary(step_zero=False), tmp_path / "budget.png", [frozen])
    (axes,) = figures[0].axes
    assert axes.get_xscale() == "log" and len(axes.patches) == 1  # random-init: a band
    # a real file too
    monkeypatch.undo()
    png = paired.plot_budgets(_sweep_summary(), tmp_path / "budget.png", [frozen])
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
