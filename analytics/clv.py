"""Customer lifetime value: BG/NBD (how many more purchases) with Gamma-Gamma (how much
each), fitted by maximum likelihood on the purchase facts of one currency.

Why these models: purchases in a CRM are non-contractual -- a customer never says they
left, they just stop buying. BG/NBD (Fader, Hardie & Lee 2005) models each customer's
purchase rate (Poisson, rates Gamma(r, alpha) across customers) and a chance to drop out
after every purchase (Beta(a, b)), and needs only frequency, recency and age per
customer, which the ``kpi_clv_inputs`` view gives. Gamma-Gamma (Fader, Hardie & Berger
2005) models the mean value of a customer's repeat purchases, assumed independent of
their frequency. Both are the standard pair for this data (the ``lifetimes`` package's
method); the likelihoods are written out here with numpy/scipy (``gammaln``, ``betaln``,
``hyp2f1``, L-BFGS-B on log-parameters) rather than depending on an unmaintained package.

Parameters are fitted on log scale within e^-10..e^10. When buyers are nearly alike
(the demo data), r and alpha (or q and v) run to the upper bound together: that is the
no-heterogeneity limit (a plain Poisson rate r / alpha), and the predictions stay finite
and sensible.

The inputs (``clv_inputs_at``) are the standard ones, as of a calibration end (the cut-off,
``as_of``; purchases after it are ignored): frequency x = purchase days after the first
(two orders on one day are one purchase), recency t_x = first to last purchase day, age
T = first purchase day to the cut-off -- each customer's clock starts at their first
purchase, not at their registration.

Time unit: weeks. CLV = expected purchases in the horizon x expected value per purchase
(undiscounted), per customer, in the currency of the fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
MIN_CUSTOMERS = 20
#: The models' time unit: frequency, recency and age in days from the SQL become weeks.
TIME_UNIT = "week"


@dataclass(frozen=True)
class BgNbd:
    r: float
    alpha: float
    a: float
    b: float


@dataclass(frozen=True)
class GammaGamma:
    p: float
    q: float
    v: float


def bgnbd_log_likelihood(params: FloatArray, x: FloatArray, t_x: FloatArray,
                         big_t: FloatArray) -> FloatArray:
    """Per-customer log-likelihood of BG/NBD (x repeat purchases, last at t_x, age T)."""
    from scipy.special import betaln, gammaln  # scipy loads in ~0.7 s: only when a model is fitted
    r, alpha, a, b = params
    ln_a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    ln_a2 = betaln(a, b + x) - betaln(a, b)
    ln_a3 = -(r + x) * np.log(alpha + big_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        ln_a4 = np.where(
            x > 0,
            np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return np.asarray(ln_a1 + ln_a2 + np.logaddexp(ln_a3, ln_a4), dtype=np.float64)


def fit_bgnbd(x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> BgNbd:
    from scipy.optimize import minimize  # scipy loads in ~0.7 s: only when a model is fitted

    def nll(log_params: FloatArray) -> float:
        ll = bgnbd_log_likelihood(np.exp(log_params), x, t_x, big_t)
        return float(-ll.sum())

    res = minimize(nll, np.zeros(4), method="L-BFGS-B", bounds=[(-10.0, 10.0)] * 4)
    r, alpha, a, b = np.exp(res.x)
    return BgNbd(float(r), float(alpha), float(a), float(b))


def expected_purchases(m: BgNbd, t: float, x: FloatArray, t_x: FloatArray,
                       big_t: FloatArray) -> FloatArray:
    """E[purchases in the next t weeks | x, t_x, T] (Fader, Hardie & Lee, eq. 10)."""
    from scipy.special import hyp2f1  # scipy loads in ~0.7 s: only when a model is fitted
    r, alpha, a, b = m.r, m.alpha, m.a, m.b
    hyp = hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + big_t + t))
    first = (a + b + x - 1) / (a - 1) * (1 - ((alpha + big_t) / (alpha + big_t + t)) ** (r + x) * hyp)
    second = 1 + (x > 0) * a / np.maximum(b + x - 1, 1e-12) * ((alpha + big_t) / (alpha + t_x)) ** (r + x)
    return np.asarray(first / second, dtype=np.float64)


def fit_gamma_gamma(x: FloatArray, m_x: FloatArray) -> GammaGamma:
    """Gamma-Gamma on customers with repeat purchases (x > 0, mean value m_x)."""
    from scipy.optimize import minimize
    from scipy.special import gammaln  # scipy loads in ~0.7 s: only when a model is fitted

    def nll(log_params: FloatArray) -> float:
        p, q, v = np.exp(log_params)
        ll = (gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * np.log(v)
              + (p * x - 1) * np.log(m_x) + p * x * np.log(x) - (p * x + q) * np.log(v + m_x * x))
        return float(-ll.sum())

    res = minimize(nll, np.array([0.0, 1.0, 0.0]), method="L-BFGS-B", bounds=[(-10.0, 10.0)] * 3)
    p, q, v = np.exp(res.x)
    return GammaGamma(float(p), float(q), float(v))


def expected_value(m: GammaGamma, x: FloatArray, m_x: FloatArray, population_mean: float) -> FloatArray:
    """E[value of a purchase | x, m_x]; customers without repeats get the population mean."""
    p, q, v = m.p, m.q, m.v
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = (p * (v + x * m_x)) / (p * x + q - 1)
    return np.asarray(np.where(x > 0, cond, population_mean), dtype=np.float64)


def lifetime_value_answer(rows: list[dict[str, Any]], *, position: int, horizon_weeks: float,
                          as_of: datetime, top: int) -> dict[str, Any]:
    """The answer of ``/analytics/clv`` and ``crm analytics clv``: the fit at the log
    ``position`` the rows were read at, each currency's ``top`` customers only."""
    out = customer_lifetime_values(rows, horizon_weeks=horizon_weeks, as_of=as_of)
    for entry in out["currencies"].values():
        if "customer_values" in entry:
            entry["customer_values"] = entry["customer_values"][:top]
    return {"position": position, **out}


def customer_lifetime_values(rows: list[dict[str, Any]], *, horizon_weeks: float = 52.0,
                             as_of: datetime | None = None) -> dict[str, Any]:
    """Fit per currency on ``clv_inputs_at(as_of)`` rows; the models and each customer's CLV.

    ``as_of`` is the calibration end the rows were taken at, echoed (UTC) with the time unit
    and how many customers each fit used."""
    out: dict[str, Any] = {
        "as_of": None if as_of is None else utc_text(as_of), "time_unit": TIME_UNIT,
        "horizon_weeks": horizon_weeks, "customers_fitted": 0, "currencies": {}}
    by_currency: dict[str, list[dict[str, Any]]] = {}
    # in customer order: the same inputs give the same fit to the last bit, whatever order
    # the query returned them in
    for row in sorted(rows, key=lambda r: str(r["customer_key"])):
        by_currency.setdefault(str(row["currency"]), []).append(row)
    for currency, group in sorted(by_currency.items()):
        x = np.array([float(r["repeat_purchase_days"]) for r in group])
        t_x = np.array([float(r["recency_days"]) for r in group]) / 7.0
        big_t = np.array([float(r["age_days"]) for r in group]) / 7.0
        repeat = x > 0
        entry: dict[str, Any] = {"customers": len(group), "repeat_buyers": int(repeat.sum()),
                                 "customers_fitted": 0}
        if len(group) < MIN_CUSTOMERS or repeat.sum() < MIN_CUSTOMERS // 2 or big_t.max() <= 0:
            entry["error"] = (f"too few customers to fit ({len(group)} buyers, "
                              f"{int(repeat.sum())} repeat buyers; need {MIN_CUSTOMERS} and "
                              f"{MIN_CUSTOMERS // 2})")
            out["currencies"][currency] = entry
            continue
        big_t = np.maximum(big_t, 1e-3)
        bg = fit_bgnbd(x, t_x, big_t)
        m_x = np.array([float(r["avg_repeat_value"] or 0.0) for r in group])
        # Fitted in units of the mean spend (the scale parameter v is linear in money),
        # so that the optimiser's bounds fit any currency's magnitudes.
        population_mean = float(m_x[repeat].mean())
        unit = population_mean if population_mean > 0 else 1.0
        fitted = fit_gamma_gamma(x[repeat], m_x[repeat] / unit)
        gg = GammaGamma(fitted.p, fitted.q, fitted.v * unit)
        n_future = expected_purchases(bg, horizon_weeks, x, t_x, big_t)
        value = expected_value(gg, x, m_x, population_mean)
        clv = n_future * value
        entry["customers_fitted"] = len(group)
        out["customers_fitted"] += len(group)
        entry.update({
            "bgnbd": bg.__dict__, "gamma_gamma": gg.__dict__,
            "total_clv": float(clv.sum()), "mean_clv": float(clv.mean()),
            "customer_values": sorted(
                ({"customer_key": r["customer_key"], "expected_purchases": float(n),
                  "expected_order_value": float(v), "clv": float(c)}
                 for r, n, v, c in zip(group, n_future, value, clv, strict=True)),
                key=lambda d: -d["clv"]),
        })
        out["currencies"][currency] = entry
    return out


def utc_text(at: datetime) -> str:
    """A cut-off as ISO 8601 in UTC (a naive time is taken as UTC, as DuckDB stores it)."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat().replace("+00:00", "Z")
