"""The lifetime-value model: BG/NBD and Gamma-Gamma recover the parameters of data
simulated from them, and give the textbook expectations."""

from __future__ import annotations

import numpy as np

from projections.analytics.clv import (
    BgNbd,
    customer_lifetime_values,
    expected_purchases,
    fit_bgnbd,
    fit_gamma_gamma,
)


def simulate_bgnbd(n: int, r: float, alpha: float, a: float, b: float, weeks: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lam = rng.gamma(r, 1 / alpha, n)
    p = rng.beta(a, b, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > weeks:
                break
            x[i] += 1
            t_x[i] = t
            if rng.random() < p[i]:
                break
    return x, t_x, np.full(n, weeks)


def test_bgnbd_recovers_simulated_parameters() -> None:
    rng = np.random.default_rng(7)
    x, t_x, big_t = simulate_bgnbd(4000, 0.25, 4.0, 0.8, 2.5, 39.0, rng)
    m = fit_bgnbd(x, t_x, big_t)
    assert abs(m.r - 0.25) < 0.05 and abs(m.alpha - 4.0) < 1.2
    # the drop-out probability's mean a / (a + b) is what the data pins down
    assert abs(m.a / (m.a + m.b) - 0.8 / 3.3) < 0.06


def test_expected_purchases_of_a_new_customer_grow_with_the_horizon() -> None:
    m = BgNbd(r=0.24, alpha=4.41, a=0.79, b=2.43)  # CDNOW, Fader, Hardie & Lee (2005)
    zero = np.zeros(1)
    one_year = expected_purchases(m, 52, zero, zero, np.full(1, 1e-9))[0]
    two_years = expected_purchases(m, 104, zero, zero, np.full(1, 1e-9))[0]
    assert 0 < one_year < two_years
    # an active frequent buyer is expected to buy more than one who went quiet long ago
    recent = expected_purchases(m, 39, np.array([5.0]), np.array([38.0]), np.array([39.0]))[0]
    quiet = expected_purchases(m, 39, np.array([5.0]), np.array([5.0]), np.array([39.0]))[0]
    assert recent > 2 * quiet


def test_gamma_gamma_recovers_the_mean_spend() -> None:
    rng = np.random.default_rng(3)
    p, q, v = 6.0, 4.0, 15.0
    nu = rng.gamma(q, 1 / v, 3000)
    x = rng.integers(1, 8, 3000).astype(float)
    m_x = np.array([rng.gamma(p * k, 1 / (n * k)) for n, k in zip(nu, x, strict=True)])
    gg = fit_gamma_gamma(x, m_x)
    # E[M] = p * v / (q - 1) for the population
    assert abs(gg.p * gg.v / (gg.q - 1) - p * v / (q - 1)) / (p * v / (q - 1)) < 0.1


def test_too_few_buyers_are_reported_not_fitted() -> None:
    rows = [{"customer_key": f"k{i}", "currency": "EUR", "frequency": i % 3,
             "recency_days": 10 * (i % 3), "age_days": 60, "avg_repeat_value": 10.0}
            for i in range(5)]
    out = customer_lifetime_values(rows)
    assert "too few customers" in out["currencies"]["EUR"]["error"]
