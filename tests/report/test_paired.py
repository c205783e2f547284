"""Paired statistics against hand computations: t intervals, bootstrap intervals, pairing, verdicts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from geocl.report.paired import (
    mean_interval,
    paired_difference,
    paired_markdown,
    paired_summary,
    pairwise_differences,
    pairwise_markdown,
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


def test_pairwise_differences_pair_every_two_recipes_the_one_ahead_first() -> None:
    pairs = pairwise_differences(_results(), "miou")
    # each two recipes once, in the order they were listed (simclr, grass, random-init)
    assert [frozenset(pair) for pair in pairs[["recipe", "versus"]].values.tolist()] == [
        frozenset({"simclr", "grass"}),
        frozenset({"simclr", "random-init"}),
        frozenset({"grass", "random-init"}),
    ]
    first, tie, third = (pairs.iloc[i] for i in range(3))
    # as paired_summary's grass - simclr: three pairs left, differences 0.010, 0.011, 0.010
    assert (first["recipe"], first["versus"]) == ("grass", "simclr")
    assert first["pairs"] == 3 and first["delta"] == pytest.approx((0.010 + 0.011 + 0.010) / 3)
    # grass - random-init over the same three pairs: 0.010 + 0.03, 0.011 - 0.03, 0.010 + 0.03 (by hand)
    assert (third["recipe"], third["versus"]) == ("grass", "random-init")
    assert third["delta"] == pytest.approx((0.040 - 0.019 + 0.040) / 3)
    assert (third["wins"], third["losses"]) == (2, 1)
    # the means are those of the paired runs, not of all of a recipe's runs
    assert third["mean"] - third["versus_mean"] == pytest.approx(third["delta"])
    # simclr against random-init: four pairs of -0.03, +0.03, a tie; the one ahead is never behind
    assert tie["delta"] == pytest.approx(0.0, abs=1e-12) and tie["delta"] >= 0
    assert tie["verdict"] == "not distinguishable"
    # without the baseline: only the pairs the baseline table lacks
    assert pairwise_differences(_results(), "miou", without="simclr")[["recipe", "versus"]].values.tolist() == [
        ["grass", "random-init"]
    ]
    text = pairwise_markdown(pairs, "mIoU")
    assert "| grass | simclr | 0.05 |" in text and "| 3 / 0 of 3 | too few pairs |" in text
    assert pairwise_markdown(pairs.iloc[0:0], "mIoU") == ""


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


def test_several_pretrainings_give_students_t_over_their_own_differences() -> None:
    # pretraining 0's six pairs all differ by 0.01, pretraining 1's by 0.03: two values, mean 0.02,
    # s = 0.0141421, t(0.975, 1) = 12.706205 (tables): half width 12.706205 * 0.0141421 / sqrt(2) = 0.127062
    diff = paired_difference([0.01] * 6 + [0.03] * 6, pretrainings=[0] * 6 + [1] * 6)
    assert diff.by_pretraining == pytest.approx((0.01, 0.03)) and diff.n == 12 and diff.wins == 12
    assert (diff.mean, diff.low, diff.high) == pytest.approx((0.02, 0.02 - 0.127062, 0.02 + 0.127062), abs=1e-6)
    assert diff.verdict == "not distinguishable"  # twelve wins, but two draws of the pretraining's luck
    plain = paired_difference([0.01] * 6 + [0.03] * 6)  # as if twelve pretrainings: an interval above 0
    assert plain.low > 0 and plain.verdict == "better" and plain.by_pretraining == ()


def test_each_pretraining_weighs_the_same_whatever_its_pairs() -> None:
    # pretraining 0 kept two pairs (mean 0.01), pretraining 1 four (0.04), pretraining 2 three (0.07):
    # mean of the three, 0.04, not of the nine pairs; s = 0.03, t(0.975, 2) = 4.302653: half 0.074524
    differences = [0.0, 0.02, 0.03, 0.03, 0.05, 0.05, 0.06, 0.07, 0.08]
    diff = paired_difference(differences, pretrainings=[0, 0, 1, 1, 1, 1, 2, 2, 2])
    assert diff.by_pretraining == pytest.approx((0.01, 0.04, 0.07))
    assert (diff.mean, diff.low, diff.high) == pytest.approx((0.04, 0.04 - 0.074524, 0.04 + 0.074524), abs=1e-6)
    assert diff.n == 9 and (diff.wins, diff.losses) == (8, 0)


def test_one_pretraining_left_gives_no_interval() -> None:
    # the other pretraining's runs all failed: its pairs say nothing about how pretrainings vary
    diff = paired_difference([0.01, 0.02, 0.03, 0.04, 0.05, 0.06], pretrainings=[1] * 6)
    assert diff.by_pretraining == pytest.approx((0.035,)) and math.isnan(diff.low)
    assert diff.verdict == "too few pretrainings" and not diff.distinguishable


#: Both recipes of :func:`_two_pretrainings` pretrained twice.
TWICE = {"simclr": 2, "grass": 2}


def _two_pretrainings() -> pd.DataFrame:
    """Six subsets x two seeds; seed s read pretraining s mod 2: grass's lead is pretraining 0's alone."""
    rows = []
    for subset_seed, seed in itertools.product(range(6), range(2)):
        base = 0.40 + 0.01 * subset_seed
        lead = 0.05 if seed == 0 else -0.01
        for recipe, value in (("simclr", base), ("grass", base + lead + 0.0012 * subset_seed)):
            rows.append(
                {"recipe": recipe, "label_fraction": 0.05, "subset_seed": subset_seed, "seed": seed, "miou": value}
            )
    return pd.DataFrame(rows).assign(status="ok")


def test_pairs_that_share_a_pretraining_are_not_counted_as_independent() -> None:
    results = _two_pretrainings()
    # as if every pair had its own pretraining: 12 pairs, a narrow interval above 0, "better"
    naive = paired_summary(results, "miou", "simclr").set_index("recipe").loc["grass"]
    assert naive["delta_low"] > 0 and naive["verdict"] == "better"
    # the pairs of pretraining 1 all lose: the interval resamples the two pretrainings and covers 0
    summary = paired_summary(results, "miou", "simclr", pretrain_seeds=TWICE).set_index("recipe").loc["grass"]
    assert summary["delta"] == pytest.approx(naive["delta"]) and summary["pairs"] == 12
    assert summary["delta_low"] < 0 < summary["delta_high"] and summary["verdict"] == "not distinguishable"
    assert [float(value) for value in summary["by_pretraining"].split()] == pytest.approx([0.053, -0.007])
    text = paired_markdown(paired_summary(results, "miou", "simclr", pretrain_seeds=TWICE), "mIoU", "simclr")
    assert "(per pretraining +0.053, -0.007)" in text and "Student's t interval over those values" in text
    assert "per pretraining" not in paired_markdown(paired_summary(results, "miou", "simclr"), "mIoU", "simclr")
    pairwise = pairwise_differences(results, "miou", pretrain_seeds=TWICE).iloc[0]
    assert pairwise["delta_low"] < 0 and pairwise["by_pretraining"] == summary["by_pretraining"]
    # rows of recipes that read no pretraining (semi-supervised, random init) share none: plain pairs
    unshared = paired_summary(results, "miou", "simclr", pretrain_seeds={"moco": 2}).set_index("recipe").loc["grass"]
    assert unshared["by_pretraining"] == "" and unshared["delta_low"] == naive["delta_low"]
    # one of the two pretrained is enough for its pairs to share its pretrainings
    one = paired_summary(results, "miou", "simclr", pretrain_seeds={"grass": 2}).set_index("recipe").loc["grass"]
    assert one["delta_low"] == summary["delta_low"]


def test_a_recipe_pretrained_twice_takes_its_mean_interval_over_its_pretrainings() -> None:
    results = _two_pretrainings()
    summary = paired_summary(results, "miou", "simclr", pretrain_seeds=TWICE).set_index("recipe")
    # grass, pretraining 0 (seed 0): 0.40 + 0.01 k + 0.05 + 0.0012 k over k = 0..5 -> 0.478;
    # pretraining 1: 0.40 + 0.01 k - 0.01 + 0.0012 k -> 0.418. Mean 0.448, s = 0.0424264,
    # half width t(0.975, 1) = 12.706205 * 0.0424264 / sqrt(2) = 0.381186
    grass = summary.loc["grass"]
    assert (grass["mean"], grass["low"], grass["high"]) == pytest.approx((0.448, 0.066814, 0.829186), abs=1e-6)
    assert grass["n"] == 12  # n still counts the runs
    # simclr's two pretrainings score alike (0.425 each): a zero-width interval, not one over its 12 runs
    simclr = summary.loc["simclr"]
    assert (simclr["mean"], simclr["low"], simclr["high"]) == pytest.approx((0.425, 0.425, 0.425))
    assert (grass["pretrainings"], simclr["pretrainings"]) == (2, 2)
    text = paired_markdown(paired_summary(results, "miou", "simclr", pretrain_seeds=TWICE), "mIoU", "simclr")
    assert "mean of its pretrainings' means" in text
    assert "pretrainings' means" not in pairwise_markdown(pairwise_differences(results, "miou"), "mIoU")
    # no pairs at all (the baseline's runs all failed): the mean cells still say how they are taken
    failed = results.assign(miou=results["miou"].where(results["recipe"] != "simclr"))
    alone = paired_summary(failed, "miou", "simclr", pretrain_seeds=TWICE)
    assert "mean of its pretrainings' means" in paired_markdown(alone, "mIoU", "simclr")
    # one pretraining of two left for every recipe: its cells read [–, –], and the caption says why
    left = results[results["seed"] == 0]
    one_left = paired_summary(left, "miou", "simclr", pretrain_seeds=TWICE)
    assert (one_left["pretrainings"] == 1).all() and one_left["low"].isna().all()
    assert "[–, –] where one pretraining is left" in paired_markdown(one_left, "mIoU", "simclr")
    once = paired_summary(results, "miou", "simclr").set_index("recipe").loc["simclr"]
    assert once["pretrainings"] == 0
    assert once["low"] == pytest.approx(mean_interval(results.loc[results["recipe"] == "simclr", "miou"]).low)
    assert once["high"] - once["low"] > 0.02  # over runs, the subsets' spread shows


def test_the_interval_over_pretrainings_covers_a_null_difference_95_percent_of_the_time() -> None:
    # two pretrainings whose luck (sd 1) dwarfs the pairs' own noise (sd 0.1), no real difference:
    # a bootstrap over the pretrainings covered 0 in about half of such comparisons
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(1000):
        luck = rng.normal(0.0, 1.0, 2)
        differences = np.concatenate([value + rng.normal(0.0, 0.1, 6) for value in luck])
        diff = paired_difference(differences.tolist(), pretrainings=[0] * 6 + [1] * 6)
        covered += diff.low <= 0.0 <= diff.high
    assert 0.93 <= covered / 1000 <= 0.97
