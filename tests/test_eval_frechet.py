"""Frechet distance: scipy numerics, analytic cases, singular covariances, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from dfm_video.eval import frechet
from dfm_video.eval.frechet import feature_statistics, frechet_distance, frechet_distance_from_features


def _random_gaussian(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.standard_normal((d, d))
    return rng.standard_normal(d), a @ a.T / d + 0.1 * np.eye(d)


def _scipy_reference(mu1, s1, mu2, s2) -> float:
    """The textbook formula, written independently with scipy."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("d", [1, 8, 64])
def test_matches_scipy_on_random_gaussians(d: int) -> None:
    rng = np.random.default_rng(d)
    mu1, s1 = _random_gaussian(rng, d)
    mu2, s2 = _random_gaussian(rng, d)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_scipy_reference(mu1, s1, mu2, s2), rel=1e-10, abs=1e-10)


def test_analytic_commuting_covariances() -> None:
    # Diagonal covariances commute: d^2 = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_set_against_itself_is_zero_and_shift_grows() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 32)) @ rng.standard_normal((32, 32)) * 0.3
    assert abs(frechet_distance_from_features(x, x)) < 1e-8
    prev = 0.0
    for shift in (0.1, 0.5, 1.0, 2.0):
        d = frechet_distance_from_features(x, x + shift)
        assert d == pytest.approx(32 * shift**2, rel=1e-8)  # a pure mean shift
        assert d > prev
        prev = d
    # A different sample of the same law is close; a scaled one is far.
    y = rng.standard_normal((500, 32))
    z = rng.standard_normal((500, 32))
    assert frechet_distance_from_features(y, z) < frechet_distance_from_features(y, 2 * z)


def test_singular_covariances_are_stable() -> None:
    # Fewer samples than dimensions: rank-deficient covariances (the small-set FVD case).
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((10, 64)), rng.standard_normal((10, 64)) + 0.5
    same = frechet_distance_from_features(a, a)
    diff = frechet_distance_from_features(a, b)
    assert np.isfinite(same) and np.isfinite(diff)
    assert abs(same) < 1e-3
    assert diff > 10


def test_non_finite_sqrtm_retries_with_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_sqrtm = frechet._sqrtm

    def flaky(a: np.ndarray) -> np.ndarray:
        calls.append(a.copy())
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(frechet, "_sqrtm", flaky)
    s = np.diag([1.0, 0.0])  # singular
    got = frechet_distance(np.zeros(2), s, np.zeros(2), s, eps=1e-6)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s + 1e-6 * np.eye(2)) @ (s + 1e-6 * np.eye(2)))
    assert abs(got) < 1e-5


def test_large_imaginary_component_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frechet, "_sqrtm", lambda a: np.eye(a.shape[0]) * (1 + 0.5j))
    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3))
    # Tiny imaginary parts (numerical noise) are dropped.
    monkeypatch.setattr(frechet, "_sqrtm", lambda a: np.eye(a.shape[0]) * (1 + 1e-9j))
    assert frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n, d", [(10, 64), (50, 64), (1000, 64), (40, 128), (3, 200)])
def test_eigh_method_agrees_with_sqrtm(n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.1
    b = rng.standard_normal((n, d)) + 0.3
    slow = frechet_distance_from_features(a, b, method="sqrtm")
    fast = frechet_distance_from_features(a, b, method="eigh")
    assert fast == pytest.approx(slow, rel=1e-6)
    # Self-distance: rank-deficient covariances leave sqrt(rounding) noise, as sqrtm does.
    assert abs(frechet_distance_from_features(a, a, method="eigh")) < 1e-5 * np.trace(np.cov(a, rowvar=False))
    with pytest.raises(ValueError, match="method must be one of"):
        frechet_distance_from_features(a, b, method="svd")


def test_statistics_are_float64_unbiased() -> None:
    x = np.random.default_rng(3).standard_normal((50, 4)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))


@pytest.mark.parametrize(
    "feats, match",
    [
        (np.zeros((1, 8)), "too few samples"),
        (np.zeros((0, 8)), "too few samples"),
        (np.zeros(8), r"must be \(N, D\)"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN or inf"),
    ],
)
def test_bad_features_raise(feats: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        feature_statistics(feats, "fake")


def test_mismatched_dimensions_raise() -> None:
    with pytest.raises(ValueError, match="feature dimensions differ: real 4 vs fake 5"):
        frechet_distance_from_features(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="covariances must both be"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
