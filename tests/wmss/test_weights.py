"""Sampling weights (both formulas, by hand), the seeded draw, selection telemetry."""

import numpy as np
import pytest

from weakstrong.wmss import resample, sampling_weights, selection_stats


# three examples: ΔH = hs - hw = [-1, +1, 0]
HS = np.array([1.0, 3.0, 2.0])
HW = np.array([2.0, 2.0, 2.0])


def test_paper_formula_by_hand():
    # p ∝ α[-ΔH]+ + β H_s + γ[ΔH]+ with α=.1, β=.8, γ=.1:
    #   ex0: .1*1 + .8*1 + 0   = 0.9
    #   ex1: 0   + .8*3 + .1*1 = 2.5
    #   ex2: 0   + .8*2 + 0   = 1.6      total 5.0
    p = sampling_weights(HS, HW, 0.1, 0.8, 0.1, "paper")
    np.testing.assert_allclose(p, [0.9 / 5, 2.5 / 5, 1.6 / 5])


def test_official_formula_by_hand():
    # p = α H_w/ΣH_w + β [-ΔH]+/Σ[-ΔH]+ + γ [ΔH]+/Σ[ΔH]+, renormalised:
    #   H_w/Σ = [1/3, 1/3, 1/3]; [-ΔH]+/Σ = [1, 0, 0]; [ΔH]+/Σ = [0, 1, 0]
    #   ex0: .1/3 + .8 = 0.8333..; ex1: .1/3 + .1 = 0.1333..; ex2: .1/3 = 0.0333..   (sum 1)
    p = sampling_weights(HS, HW, 0.1, 0.8, 0.1, "official")
    np.testing.assert_allclose(p, [0.1 / 3 + 0.8, 0.1 / 3 + 0.1, 0.1 / 3])


def test_formulas_favour_different_examples():
    assert np.argmax(sampling_weights(HS, HW, formula="paper")) == 1  # the strong model's most uncertain
    assert np.argmax(sampling_weights(HS, HW, formula="official")) == 0  # where the strong model improved most


def test_official_skips_empty_terms():
    # no example with ΔH > 0: the γ term is dropped, the rest renormalised
    hs, hw = np.array([1.0, 1.5]), np.array([2.0, 2.0])
    p = sampling_weights(hs, hw, 0.1, 0.8, 0.1, "official")
    raw = 0.1 * hw / hw.sum() + 0.8 * np.array([1.0, 0.5]) / 1.5
    np.testing.assert_allclose(p, raw / raw.sum())


def test_all_zero_entropies_fall_back_to_uniform():
    with pytest.warns(UserWarning, match="uniform"):
        p = sampling_weights(np.zeros(4), np.zeros(4), formula="paper")
    np.testing.assert_allclose(p, 0.25)


@pytest.mark.parametrize("kw, match", [
    (dict(alpha=-0.1), ">= 0"),
    (dict(alpha=0, beta=0, gamma=0), "all 0"),
    (dict(formula="v1"), "formula"),
])
def test_weight_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        sampling_weights(HS, HW, **kw)


def test_nan_entropy_is_an_error():
    with pytest.raises(ValueError, match="finite"):
        sampling_weights(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))


def test_resample_is_seeded_and_dedups():
    p = np.array([0.7, 0.1, 0.1, 0.1])
    a = resample(p, 50, seed=3, dedup=False)
    b = resample(p, 50, seed=3, dedup=False)
    assert a.tolist() == b.tolist() and len(a) == 50
    assert (np.bincount(a, minlength=4)[0]) > 25  # the heavy example dominates
    d = resample(p, 50, seed=3, dedup=True)
    assert sorted(d.tolist()) == sorted(set(a.tolist()))  # unique, same support
    assert d.tolist() == list(dict.fromkeys(a.tolist()))  # order of first draw
    assert resample(p, 50, seed=4, dedup=False).tolist() != a.tolist()


def test_resample_zero_weight_never_drawn():
    d = resample(np.array([0.0, 1.0, 0.0]), 20, seed=0, dedup=False)
    assert set(d.tolist()) == {1}


def test_selection_stats():
    s = selection_stats(HS, HW, np.array([1, 1, 0]), n_drawn=3)
    assert s["delta/share_negative"] == pytest.approx(1 / 3)
    assert s["delta/share_positive"] == pytest.approx(1 / 3)
    assert s["delta/share_zero"] == pytest.approx(1 / 3)
    assert s["selection/duplicates"] == 1 and s["selection/unique"] == 2
    assert s["entropy/strong"] == pytest.approx(2.0) and s["entropy/weak"] == pytest.approx(2.0)
