"""weakstrong.stats: closed forms of the t distribution, coverage on simulated data, the paired bootstrap."""

import math

import numpy as np
import pytest

from weakstrong.stats import (
    Interval,
    binomial_se,
    mean_ci,
    paired_bootstrap,
    paired_t_ci,
    seeds_needed,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_closed_forms(p):
    # df = 1 is the Cauchy distribution; df = 2 has t = (2p - 1) / sqrt(2 p (1 - p))
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)


def test_t_quantile_table_values_and_normal_limit():
    # printed tables (4 significant digits)
    for df, q in [(3, 3.182), (4, 2.776), (9, 2.262), (19, 2.093), (29, 2.045)]:
        assert t_quantile(0.975, df) == pytest.approx(q, abs=6e-4)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)
    assert t_quantile(0.025, 9) == pytest.approx(-t_quantile(0.975, 9), rel=1e-12)
    assert t_quantile(0.5, 5) == 0.0


def test_t_cdf_inverts_quantile_and_is_symmetric():
    for df in (1, 2.5, 7, 40):
        for p in (0.01, 0.3, 0.8, 0.999):
            assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)
        assert t_cdf(1.3, df) + t_cdf(-1.3, df) == pytest.approx(1.0, abs=1e-12)
    assert t_cdf(math.inf, 3) == 1.0 and t_cdf(-math.inf, 3) == 0.0


def test_mean_ci_closed_form():
    x = [1.0, 2.0, 4.0, 7.0]
    ci = mean_ci(x)
    sd = float(np.std(x, ddof=1))
    half = t_quantile(0.975, 3) * sd / 2.0
    assert ci.estimate == pytest.approx(3.5)
    assert ci.half_width == pytest.approx(half)
    assert (ci.low, ci.high) == pytest.approx((3.5 - half, 3.5 + half))
    assert ci.n == 4 and ci.method == "t" and ci.sd == pytest.approx(sd)


def test_t_interval_coverage_on_simulated_seeds():
    # 4,000 experiments of 5 seeds each: a t-interval covers the true mean 95% of the time (a z-interval with 1.96
    # would cover only ~88% at n = 5, and fail this test)
    rng = np.random.default_rng(1)
    true = 0.7
    a = rng.normal(true, 2.0, size=(4000, 5)) + rng.normal(0, 3.0, size=(4000, 1))  # shared seed effect
    b = a - true + rng.normal(0, 0.5, size=(4000, 5))
    hits = 0
    for i in range(4000):
        ci = paired_t_ci(a[i], b[i])
        hits += ci.low <= true <= ci.high
    assert abs(hits / 4000 - 0.95) < 3 * math.sqrt(0.95 * 0.05 / 4000) + 0.002


def test_pairing_removes_the_shared_variation():
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 10.0, size=10)
    a = seed_effect + 1.0 + rng.normal(0, 0.1, size=10)
    b = seed_effect + rng.normal(0, 0.1, size=10)
    paired = paired_t_ci(a, b)
    assert paired.excludes(0.0) and paired.half_width < 0.2
    assert mean_ci(a).half_width > 5  # the unpaired intervals overlap completely


def test_paired_bootstrap_degenerate_and_exact_cases():
    a = np.array([1, 0, 1, 1, 0, 1, 0, 0] * 50, dtype=bool)
    same = paired_bootstrap(a, a, n_resamples=500)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    all_right = paired_bootstrap(np.ones(300), np.zeros(300), n_resamples=500)
    assert (all_right.estimate, all_right.low, all_right.high) == (1.0, 1.0, 1.0)
    # reproducible for a seed
    rng = np.random.default_rng(3)
    x, y = rng.random(400) < 0.6, rng.random(400) < 0.5
    assert paired_bootstrap(x, y, seed=5, n_resamples=1000) == paired_bootstrap(x, y, seed=5, n_resamples=1000)


def test_paired_bootstrap_matches_the_normal_approximation():
    # for n = 4,000 problems the bootstrap SD of a mean difference is sd(d) / sqrt(n)
    rng = np.random.default_rng(2)
    n = 4000
    base = rng.random(n) < 0.7
    flip = rng.random(n) < 0.1
    other = np.where(flip, ~base, base)
    d = other.astype(float) - base.astype(float)
    ci = paired_bootstrap(other, base, n_resamples=4000, seed=0)
    se = d.std(ddof=1) / math.sqrt(n)
    assert ci.sd == pytest.approx(se, rel=0.05)
    assert ci.half_width == pytest.approx(1.96 * se, rel=0.08)
    assert ci.estimate == pytest.approx(d.mean())


def test_paired_bootstrap_coverage_on_simulated_problems():
    # the true accuracy difference is 0.05; intervals from 300 simulated test sets of 500 problems (the pairing itself
    # is checked by the identical-arrays case above: an unpaired bootstrap would give a non-zero width there)
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(300):
        p = rng.random(500)  # per-problem difficulty, shared by both models: the pairing matters
        a = rng.random(500) < np.clip(p + 0.05, 0, 1)
        b = rng.random(500) < p
        ci = paired_bootstrap(a, b, n_resamples=1000, seed=int(rng.integers(1 << 30)))
        true = float(np.mean(np.clip(p + 0.05, 0, 1) - p))
        hits += ci.low <= true <= ci.high
    assert abs(hits / 300 - 0.95) < 3 * math.sqrt(0.95 * 0.05 / 300) + 0.01


def test_seeds_needed_is_the_smallest_n():
    n = seeds_needed(sd=2.0, half_width=1.0)
    assert t_quantile(0.975, n - 1) * 2.0 / math.sqrt(n) <= 1.0
    assert t_quantile(0.975, n - 2) * 2.0 / math.sqrt(n - 1) > 1.0
    assert n == 18
    assert seeds_needed(sd=0.0, half_width=1.0) == 2


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 2 values"):
        mean_ci([1.0])
    with pytest.raises(ValueError, match="same length"):
        paired_t_ci([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="df"):
        t_quantile(0.9, 0)


def test_interval_reading():
    up = Interval(0.02, 0.01, 0.03, 10, 0.95, "t", 0.01)
    assert up.excludes(0) and "greater than 0" in up.verdict()
    unresolved = Interval(0.01, -0.01, 0.03, 10, 0.95, "t", 0.01)
    assert not unresolved.excludes(0) and "not resolved" in unresolved.verdict()
    assert up.format(scale=100) == "+2.0 ± 1.0"
    assert binomial_se(0.5, 2500) == pytest.approx(0.01)
