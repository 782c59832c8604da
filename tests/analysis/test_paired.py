"""Paired comparison statistics (pyro_vae.analysis.paired) against independent computations."""

import math

import numpy as np
import pytest
from scipy import stats

from pyro_vae.analysis import paired
from pyro_vae.errors import UserError


def scores(seeds, items, delta, seed_sd=0.3, item_sd=5.0, noise_sd=0.5, rng=None):
    """Two configurations on shared items: b = item difficulty + noise, a = b + delta + seed and interaction effects."""
    rng = rng or np.random.default_rng(0)
    difficulty = rng.normal(-100, item_sd, size=items)
    b = difficulty + rng.normal(0, noise_sd, size=(seeds, items))
    a = difficulty + delta + rng.normal(0, seed_sd, size=(seeds, 1)) + rng.normal(0, noise_sd, size=(seeds, items))
    return a, b


def test_one_seed_is_the_classic_paired_standard_error():
    a, b = scores(1, 500, 0.2)
    r = paired.paired_difference(a[0], b[0])
    d = a[0] - b[0]
    assert r["mean"] == pytest.approx(d.mean(), rel=1e-12)
    assert r["se"] == pytest.approx(stats.sem(d), rel=1e-12)
    # scipy's paired t statistic is mean / se
    assert r["z"] == pytest.approx(stats.ttest_rel(a[0], b[0]).statistic, rel=1e-10)
    assert r["n_seeds"] == 1 and r["n_items"] == 500 and r["se_seeds"] == 0.0
    # pairing removes the shared item difficulty: the unpaired SE would be about 10x larger
    unpaired = math.sqrt(a[0].var(ddof=1) / 500 + b[0].var(ddof=1) / 500)
    assert r["se"] < unpaired / 5


def test_several_seeds_by_hand():
    a, b = scores(3, 200, 1.0)
    r = paired.paired_difference(a, b)
    # by hand, with loops
    S, N = a.shape
    d = [[a[s][i] - b[s][i] for i in range(N)] for s in range(S)]
    m = [sum(row) / N for row in d]
    dbar = [sum(d[s][i] for s in range(S)) / S for i in range(N)]
    grand = sum(m) / S
    se_seeds = math.sqrt(sum((v - grand) ** 2 for v in m) / (S - 1) / S)
    se_items = math.sqrt(sum((v - grand) ** 2 for v in dbar) / (N - 1) / N)
    assert r["mean"] == pytest.approx(grand, rel=1e-12)
    assert r["se_seeds"] == pytest.approx(se_seeds, rel=1e-10)
    assert r["se_items"] == pytest.approx(se_items, rel=1e-10)
    assert r["se"] == pytest.approx(math.hypot(se_seeds, se_items), rel=1e-10)
    assert r["seed_means"] == pytest.approx(m, rel=1e-12)
    assert r["seed_ses"] == pytest.approx([stats.sem(row) for row in d], rel=1e-10)
    assert r["seed_wins"] == sum(v > 0 for v in m)
    assert r["item_wins"] == pytest.approx(np.mean(np.array(d) > 0))
    assert r["indistinguishable"] == (abs(grand) < 2 * r["se"])


def test_standard_error_is_calibrated_under_the_two_way_model():
    """Over many simulated experiments, E[SE^2] is at least the variance of the estimate and not far above."""
    rng = np.random.default_rng(1)
    S, N = 3, 100
    means, se2 = [], []
    for _ in range(3000):
        a, b = scores(S, N, 0.5, seed_sd=0.3, item_sd=2.0, noise_sd=1.0, rng=rng)
        r = paired.paired_difference(a, b)
        means.append(r["mean"])
        se2.append(r["se"] ** 2)
    # here the item effect cancels in the difference; true Var = seed_sd^2 / S + 2 noise_sd^2 / (S N)
    true_var = 0.3**2 / S + 2 * 1.0**2 / (S * N)
    assert np.var(means, ddof=1) == pytest.approx(true_var, rel=0.1)
    assert 0.95 < np.mean(se2) / true_var < 1.3


def test_statements():
    r = {"mean": 1.3, "se": 0.2, "n_seeds": 3, "n_items": 10000, "indistinguishable": False}
    assert paired.statement("iaf", "diagonal", r).startswith("iaf beats diagonal by 1.30 ± 0.20 nats (paired over 3 seeds")
    r2 = dict(r, mean=-1.3)
    assert paired.statement("iaf", "diagonal", r2).startswith("diagonal beats iaf by 1.30 ± 0.20 nats")
    # lower is better (bits/dim): a negative difference means A wins
    assert paired.statement("iaf", "diagonal", dict(r, mean=-0.013, se=0.002), unit="bits/dim",
                            higher_is_better=False).startswith("iaf beats diagonal by 0.0130 ± 0.0020 bits/dim")  # fmt: skip
    r3 = dict(r, mean=0.1, se=0.3, n_seeds=1, indistinguishable=True)
    text = paired.statement("iaf", "diagonal", r3)
    assert text.startswith("iaf and diagonal are indistinguishable: iaf − diagonal = +0.10 ± 0.30 nats")
    assert "1 seed ×" in text and "training noise not measured" in text


def test_all_pairs_orients_the_winner_first():
    rng = np.random.default_rng(2)
    base = rng.normal(-90, 4, size=(2, 300))
    by = {"diagonal": base, "iaf": base + 1.0 + rng.normal(0, 0.3, base.shape), "planar": base + rng.normal(0, 0.3, base.shape)}
    pairs = paired.all_pairs(by)
    assert [(p["a"], p["b"]) for p in pairs] == [("iaf", "diagonal"), ("diagonal", "planar") if
                                                  (by["diagonal"] - by["planar"]).mean() > 0 else ("planar", "diagonal"),
                                                  ("iaf", "planar")]  # fmt: skip
    first = pairs[0]
    assert first["mean"] == pytest.approx((by["iaf"] - by["diagonal"]).mean(), rel=1e-12)
    assert first["statement"].startswith(f"iaf beats diagonal by {first['mean']:.3f} ± {first['se']:.3f} nats")
    assert first["se"] == pytest.approx(0.019, abs=0.005)  # shown with 3 decimals: the SE to 2 significant digits
    assert pairs[1]["indistinguishable"]


def test_refusals():
    with pytest.raises(UserError, match="same seeds and items"):
        paired.paired_difference(np.zeros((2, 5)), np.zeros((2, 6)))
    with pytest.raises(UserError, match="at least 2 items"):
        paired.paired_difference([1.0], [2.0])
    with pytest.raises(UserError, match="NaN"):
        paired.paired_difference([1.0, np.nan], [2.0, 3.0])
