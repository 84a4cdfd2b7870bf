"""The lifetime-value model: BG/NBD and Gamma-Gamma recover the parameters of data
simulated from them, and give the textbook expectations."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from analytics.clv import (
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


def cdnow_like_inputs(seed: int) -> list[dict[str, object]]:
    """clv_inputs_at rows (days) of 2,357 customers drawn from BG/NBD with the CDNOW sample's
    published parameters, in its design: first purchases in the first 12 weeks, calibration
    to day 273 (39 weeks); frequency counts purchase days."""
    rng = np.random.default_rng(seed)
    r, alpha, a, b = CDNOW
    rows: list[dict[str, object]] = []
    for i in range(2357):
        first = int(rng.integers(0, 84))
        lam, p = rng.gamma(r, 1 / alpha), rng.beta(a, b)
        t, days = first / 7, {first}
        while True:
            t += rng.exponential(1 / lam)
            if t > 273 / 7:
                break
            days.add(int(t * 7))
            if rng.random() < p:
                break
        d = sorted(days)
        rows.append({"customer_key": f"c{i:04d}", "currency": "USD",
                     "repeat_purchase_days": len(d) - 1, "recency_days": d[-1] - d[0],
                     "age_days": 273 - d[0],
                     "avg_repeat_value": 30.0 + i % 7 if len(d) > 1 else None})
    return rows


CDNOW = (0.243, 4.414, 0.793, 2.426)  # Fader, Hardie & Lee (2005), 2,357 customers


def test_cdnow_like_purchases_give_back_the_published_parameters() -> None:
    rows = cdnow_like_inputs(2)
    out = customer_lifetime_values(rows, as_of=datetime(1997, 9, 30, tzinfo=UTC))
    # the cut-off, the time unit and the customers fitted are part of the answer
    assert out["as_of"] == "1997-09-30T00:00:00Z" and out["time_unit"] == "week"
    assert out["customers_fitted"] == 2357 == out["currencies"]["USD"]["customers_fitted"]
    m = out["currencies"]["USD"]["bgnbd"]
    r, alpha, a, b = CDNOW
    assert abs(m["r"] - r) < 0.05 and abs(m["alpha"] / alpha - 1) < 0.3
    assert abs(m["a"] / (m["a"] + m["b"]) - a / (a + b)) < 0.05
    # the answer does not depend on the order the rows came in
    again = customer_lifetime_values(rows[::-1], as_of=datetime(1997, 9, 30, tzinfo=UTC))
    assert again["currencies"]["USD"]["bgnbd"] == m


def test_too_few_buyers_are_reported_not_fitted() -> None:
    rows = [{"customer_key": f"k{i}", "currency": "EUR", "repeat_purchase_days": i % 3,
             "recency_days": 10 * (i % 3), "age_days": 60, "avg_repeat_value": 10.0}
            for i in range(5)]
    out = customer_lifetime_values(rows)
    assert "too few customers" in out["currencies"]["EUR"]["error"]
    assert out["customers_fitted"] == 0 and out["currencies"]["EUR"]["customers"] == 5
