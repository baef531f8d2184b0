"""Paired multi-seed comparison (captionless3d.evaluation.paired): numbers against hand computations."""
from __future__ import annotations

import json
import math

import pytest

from captionless3d.errors import DataError
from captionless3d.evaluation.paired import (
    DEFAULT_PAIRED_METRICS,
    format_cell,
    paired_differences,
    paired_markdown,
    paired_to_dict,
    t_quantile,
)
from captionless3d.evaluation.report import gallery_keys, paper_keys, zeroshot_keys

ZS = "zeroshot/top1"
R1 = "retrieval/nobg/gallery/i2s_r1"

# Student-t quantiles in closed form (independent of scipy): df = 2: t_p = (2p − 1) · sqrt(2 / (4p(1 − p))),
# df = 1 (Cauchy): t_p = tan(π (p − 1/2)). p = 0.975 -> 4.3026527297494638 and 12.706204736174705 (the normal 1.96
# would be wrong for 3 seeds).
T_975_DF2 = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))
T_975_DF1 = math.tan(math.pi * 0.475)


def _runs() -> dict:
    """baseline and avg on seeds 0, 1, 2: avg − baseline = 1, 2, 3 on zero-shot top-1."""
    return {
        "baseline": {0: {ZS: 40.0, R1: 10.0}, 1: {ZS: 50.0, R1: 20.0}, 2: {ZS: 45.0, R1: 30.0}},
        "avg": {0: {ZS: 41.0, R1: 10.0}, 1: {ZS: 52.0, R1: 19.0}, 2: {ZS: 48.0, R1: 35.0}},
    }


def test_t_quantile_matches_the_table_value():
    assert T_975_DF2 == pytest.approx(4.302652729749464, rel=1e-12)
    assert t_quantile(3) == pytest.approx(T_975_DF2, rel=1e-10)  # df = n − 1 = 2
    assert t_quantile(2) == pytest.approx(T_975_DF1, rel=1e-10)  # df = 1
    with pytest.raises(DataError, match="n = 1"):
        t_quantile(1)


def test_mean_and_student_t_interval_by_hand():
    stat = paired_differences(_runs(), "baseline", [ZS]).stats[("avg", ZS)]
    # differences 1, 2, 3 -> mean 2; sample std sqrt(((1-2)^2 + 0 + (3-2)^2) / (3 - 1)) = 1 (population std would be
    # sqrt(2/3) = 0.816); half width t(0.975, 2) * 1 / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    half = T_975_DF2 * 1.0 / math.sqrt(3)
    assert stat.n == 3 and stat.seeds == (0, 1, 2)
    assert stat.differences == pytest.approx((1.0, 2.0, 3.0))
    assert stat.mean_diff == pytest.approx(2.0)  # variant − reference, not the other way round
    assert stat.sd_diff == pytest.approx(1.0)
    assert stat.ci_low == pytest.approx(2.0 - half, abs=1e-9)
    assert stat.ci_high == pytest.approx(2.0 + half, abs=1e-9)
    assert half == pytest.approx(2.4841, abs=1e-4)
    assert (stat.wins, stat.ties, stat.losses) == (3, 0, 0)


def test_wins_ties_losses_are_counted_separately():
    # R@1 avg − baseline = 0, −1, +5: one tie, one loss, one win
    stat = paired_differences(_runs(), "baseline", [R1]).stats[("avg", R1)]
    assert (stat.wins, stat.ties, stat.losses) == (1, 1, 1)
    assert stat.mean_diff == pytest.approx(4.0 / 3.0)
    # sd = sqrt(((0 − 4/3)^2 + (−1 − 4/3)^2 + (5 − 4/3)^2) / 2) = sqrt(31/3) = 3.2146; half = 4.3027 · 3.2146 / √3 =
    # 7.985
    assert stat.sd_diff == pytest.approx(math.sqrt(31 / 3))
    assert stat.ci_high == pytest.approx(4 / 3 + T_975_DF2 * math.sqrt(31 / 3) / math.sqrt(3))
    assert format_cell(stat) == "+1.3 [-6.7, +9.3] 1/3 (1 tie)"


def test_lower_is_better_flips_wins_not_the_difference():
    runs = _runs()
    higher = paired_differences(runs, "baseline", [ZS, R1]).stats
    lower = paired_differences(runs, "baseline", [ZS, R1], lower_is_better=["zeroshot/*"]).stats
    assert (lower[("avg", ZS)].wins, lower[("avg", ZS)].losses) == (0, 3)
    assert (higher[("avg", ZS)].wins, higher[("avg", ZS)].losses) == (3, 0)
    assert lower[("avg", ZS)].mean_diff == pytest.approx(2.0) and lower[("avg", ZS)].lower_is_better
    assert lower[("avg", R1)] == higher[("avg", R1)]  # the pattern does not match R@1: unchanged
    table = paired_markdown(paired_differences(runs, "baseline", [ZS], lower_is_better=["zeroshot/*"]))
    assert "↓" in table and "lower is better" in table


def test_unmatched_seeds_are_excluded_and_reported():
    runs = _runs()
    runs["avg"][7] = {ZS: 99.0, R1: 99.0}  # no baseline seed 7: must not enter the statistics
    del runs["avg"][0]  # baseline seed 0 has no avg partner
    comparison = paired_differences(runs, "baseline", [ZS])
    stat = comparison.stats[("avg", ZS)]
    assert stat.seeds == (1, 2) and stat.differences == pytest.approx((2.0, 3.0))
    # differences 2, 3: mean 2.5, sd sqrt(0.5), t(0.975, 1) = 12.7062 -> half 12.7062 * 0.7071 / 1.4142 = 6.3531
    assert stat.mean_diff == pytest.approx(2.5)
    assert stat.ci_high - stat.mean_diff == pytest.approx(T_975_DF1 * math.sqrt(0.5) / math.sqrt(2))
    assert comparison.variant_only_seeds == {"avg": (7,)} and comparison.reference_only_seeds == {"avg": (0,)}
    notes = " ".join(comparison.notes())
    assert "seeds [7]" in notes and "seeds [0]" in notes and "excluded" in notes
    assert "seeds [7]" in paired_markdown(comparison)


def test_variant_without_paired_seed_gets_no_row_but_a_note():
    runs = _runs()
    runs["i2i"] = {5: {ZS: 60.0}, 6: {ZS: 61.0}}
    comparison = paired_differences(runs, "baseline", [ZS])
    assert comparison.unpaired_variants == ("i2i",) and comparison.paired_variants == ("avg",)
    assert not any(v == "i2i" for v, _ in comparison.stats)
    table = paired_markdown(comparison)
    assert "| i2i |" not in table and "| avg |" in table
    assert "i2i: no seed in common with baseline; no paired row." in table
    assert [r["variant"] for r in paired_to_dict(comparison)["rows"]] == ["avg"]


def test_single_paired_seed_has_an_undefined_interval_not_zero():
    runs = {"baseline": {0: {ZS: 40.0}}, "avg": {0: {ZS: 42.5}}}
    comparison = paired_differences(runs, "baseline", [ZS])
    stat = comparison.stats[("avg", ZS)]
    assert stat.n == 1 and stat.mean_diff == pytest.approx(2.5)
    assert stat.sd_diff is None and stat.ci_low is None and stat.ci_high is None
    assert format_cell(stat) == "+2.5 [CI undefined, n=1] 1/1"
    row = paired_to_dict(comparison)["rows"][0]
    assert row["ci_low"] is None and row["ci_high"] is None
    json.dumps(paired_to_dict(comparison), allow_nan=False)  # JSON-safe: no NaN anywhere


def test_missing_metrics_are_skipped_not_invented():
    comparison = paired_differences(_runs(), "baseline", ["linear_probe/top1", ZS])
    assert comparison.metrics == (ZS,) and comparison.missing_metrics == ("linear_probe/top1",)
    assert "linear_probe/top1" not in paired_markdown(comparison).split("**How to read.**")[0]
    # reported by the reference but not by the variant: an empty cell and a note, no number
    runs = _runs()
    runs["i2l2"] = {0: {ZS: 40.0}, 1: {ZS: 50.0}}
    comparison = paired_differences(runs, "baseline", [ZS, R1])
    assert ("i2l2", R1) not in comparison.stats and comparison.unreported == {"i2l2": (R1,)}
    assert "| i2l2 | +0.0 [+0.0, +0.0] 0/2 (2 ties) | – |" in paired_markdown(comparison)


def test_default_metrics_are_real_report_keys():
    keys = set(zeroshot_keys({"top1": 1.0}))
    for bg in ("nobg", "bg"):
        keys |= set(paper_keys({"i2s_top1": 1.0}, bg))
        keys |= set(gallery_keys({"i2s_r1": 1.0, "samecat": {"i2s_r1": 1.0}}, bg))
    assert set(DEFAULT_PAIRED_METRICS) <= keys


def test_table_caption_and_json_rows():
    comparison = paired_differences(_runs(), "baseline", [ZS, R1])
    table = paired_markdown(comparison, title="heldout: paired")
    assert table.startswith("# heldout: paired")
    assert "| avg | +2.0 [-0.5, +4.5] 3/3 | +1.3 [-6.7, +9.3] 1/3 (1 tie) |" in table
    assert "variant − baseline" in table and "Student's t" in table and "strictly better" in table
    assert "| baseline |" not in table  # the reference is not compared with itself
    payload = paired_to_dict(comparison)
    assert payload["reference"] == "baseline" and payload["metrics"] == [ZS, R1]
    first = payload["rows"][0]
    assert (first["variant"], first["metric"], first["n"], first["wins"]) == ("avg", ZS, 3, 3)
    assert first["ci_low"] == pytest.approx(2.0 - T_975_DF2 / math.sqrt(3))


def test_errors_name_the_problem():
    with pytest.raises(DataError, match="'i2i' not among the runs"):
        paired_differences(_runs(), "i2i", [ZS])
    runs = _runs()
    del runs["avg"][1][ZS]
    with pytest.raises(DataError, match=r"'avg' report 'zeroshot/top1' for seeds \[0, 2\] but not for seeds \[1\]"):
        paired_differences(runs, "baseline", [ZS])
    runs = _runs()
    runs["avg"][1][ZS] = float("nan")
    with pytest.raises(DataError, match="'zeroshot/top1' of 'avg' seed 1 is not a finite number"):
        paired_differences(runs, "baseline", [ZS])
