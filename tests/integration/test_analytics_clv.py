"""Lifetime value, RFM and customer classes as of a cut-off, through the analytics routes.

The purchases are drawn from BG/NBD with the CDNOW sample's published parameters (r 0.243,
alpha 4.414, a 0.793, b 2.426; Fader, Hardie & Lee 2005) in the CDNOW design: first
purchases in the first twelve weeks of 1997, calibration to the end of September 1997,
purchases going on after it. The test knows every customer's purchase days, so it knows
the model's inputs (x, t_x, T) and checks the API against a fit on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import httpx
import numpy as np
import pytest

from events import customer as ce
from events import interaction as ie
from analytics.clv import customer_lifetime_values
from tests.e2e.test_http import serving
from tests.integration.test_analytics import ROOT, Log, q

pytestmark = pytest.mark.postgres
START = datetime(1997, 1, 1, tzinfo=UTC)
AS_OF = datetime(1997, 9, 30, 23, 59, 59, tzinfo=UTC)
AS_OF_TEXT = "1997-09-30T23:59:59Z"
END = datetime(1998, 6, 30, tzinfo=UTC)
CDNOW = (0.243, 4.414, 0.793, 2.426)
N = 300


def purchase_days(rng: np.random.Generator) -> list[list[int]]:
    """Each customer's purchase days (days after START), first purchase in weeks 0-12."""
    r, alpha, a, b = CDNOW
    out = []
    weeks_to_end = (END - START).days / 7
    for _ in range(N):
        first = float(rng.integers(0, 84)) / 7
        lam, p = rng.gamma(r, 1 / alpha), rng.beta(a, b)
        t, days = first, [int(first * 7)]
        while True:
            t += rng.exponential(1 / lam)
            if t > weeks_to_end:
                break
            days.append(int(t * 7))
            if rng.random() < p:
                break
        out.append(days)
    return out


def amount(i: int, n: int) -> Decimal:
    """The value of customer i's n-th purchase (customers differ in their mean spend)."""
    return Decimal(15 + (i * 7) % 40) + Decimal((n * 13) % 10) / 4


def summary(days: list[int]) -> tuple[int, int, int] | None:
    """(repeat purchase days, recency days, age days) as of AS_OF; None: no purchase by then."""
    cut = (AS_OF - START).days
    seen = sorted({d for d in days if d <= cut})
    if not seen:
        return None
    return len(seen) - 1, seen[-1] - seen[0], cut - seen[0]


def repeat_value(i: int, days: list[int], extra: Decimal) -> float | None:
    """Mean value of the purchase days after the first, as of AS_OF."""
    cut = (AS_OF - START).days
    per_day: dict[int, Decimal] = {}
    for n, d in enumerate(days):
        if d <= cut:
            per_day[d] = per_day.get(d, Decimal(0)) + amount(i, n)
    if len(per_day) < 2:
        return None
    first = min(per_day)
    per_day[first] += extra
    return float(sum(v for d, v in per_day.items() if d != first) / (len(per_day) - 1))


@pytest.fixture
def cdnow_system(make_system: Callable[..., Any], database_url: str) -> Any:
    system = make_system()
    log = Log(database_url, system.app.codec)
    rng = np.random.default_rng(1997)
    histories = purchase_days(rng)
    customers: list[tuple[UUID, list[int]]] = []
    for i, days in enumerate(histories):
        cid = uuid4()
        first = START + timedelta(days=days[0], hours=12)
        if i % 3 == 0:  # registered the evening after the first purchase
            registered = first + timedelta(hours=6)
        elif i % 3 == 1:  # registered long before
            registered = START - timedelta(days=30)
        else:  # registered months later (an import): earlier purchases are back-dated
            registered = START + timedelta(days=150)
        log.customer(cid, registered, "rep-1", "customer")
        for n, d in enumerate(days):
            log.purchase(cid, START + timedelta(days=d, hours=12), str(amount(i, n)), "USD")
        if i % 10 == 0:  # a second order on the first day: one purchase day, two orders
            log.purchase(cid, first + timedelta(minutes=5), "5.00", "USD")
        customers.append((cid, days))
    # registered after the cut-off, bought before it; lifecycle churned after the cut-off
    late = uuid4()
    late_days = [20, 60, 100, 250]
    log.customer(late, datetime(1998, 1, 15, tzinfo=UTC), "rep-2", "customer")
    for d in late_days:
        log.purchase(late, START + timedelta(days=d, hours=12), "40.00", "USD")
    log.emit(ce.LifecycleStageChanged, late, datetime(1998, 3, 1, tzinfo=UTC),
             from_stage="customer", to_stage="churned")
    customers.append((late, late_days))
    # bought only after the cut-off: not in the calibration
    after = uuid4()
    log.customer(after, START, "rep-1", "customer")
    log.purchase(after, datetime(1997, 11, 5, 12, tzinfo=UTC), "30.00", "USD")
    customers.append((after, [(datetime(1997, 11, 5, tzinfo=UTC) - START).days]))
    log.close()
    system.analytics.catch_up()
    system.customers = customers
    system.late, system.after = late, after
    return system


def keys(system: Any) -> dict[UUID, str]:
    return {UUID(str(r[0])): r[1] for r in q(system, "SELECT DISTINCT aggregate_id, customer_key"
                                               " FROM fact_events WHERE aggregate_type = 'customer'")}


def test_clv_is_fitted_as_of_the_cut_off_and_ignores_later_events(
        cdnow_system: Any, database_url: str) -> None:
    s = cdnow_system
    key = keys(s)
    expected = {key[cid]: summary(days) for cid, days in s.customers}
    expected = {k: v for k, v in expected.items() if v is not None}
    assert key[s.after] not in expected and key[s.late] in expected
    values = {key[cid]: repeat_value(i, days, Decimal("5.00") if i % 10 == 0 else Decimal(0))
              for i, (cid, days) in enumerate(s.customers[:N])}
    # the model's inputs as of the cut-off, as the test worked them out
    own = customer_lifetime_values(
        [{"customer_key": k, "currency": "USD", "repeat_purchase_days": x, "recency_days": rec,
          "age_days": age, "avg_repeat_value": values.get(k, 40.0 if x else None)}
         for k, (x, rec, age) in expected.items()], as_of=AS_OF)["currencies"]["USD"]

    with serving(s.http_app()) as base, httpx.Client(base_url=base, timeout=60) as client:
        analyst = {"Authorization": "Bearer " + s.tokens.issue("ann", "analyst")}

        def get(path: str, **params: Any) -> Any:
            r = client.get(f"/api/v1/analytics{path}", params=params, headers=analyst)
            assert r.status_code == 200, r.text
            return r.json()

        # the inputs: T runs from the first purchase day (not the registration) to the
        # cut-off, frequency counts purchase days, purchases after the cut-off are ignored
        inputs = get("/kpis/clv_inputs", as_of=AS_OF_TEXT)
        assert inputs["as_of"] == AS_OF_TEXT and inputs["time_unit"] == "day"
        assert inputs["customers"] == len(expected) == inputs["row_count"]
        got = {r["customer_key"]: (r["repeat_purchase_days"], r["recency_days"], r["age_days"])
               for r in inputs["rows"]}
        assert got == expected
        for r in inputs["rows"]:
            want = values.get(r["customer_key"])
            if want is None:
                assert r["avg_repeat_value"] is None or r["customer_key"] == key[s.late]
            else:
                assert r["avg_repeat_value"] == pytest.approx(want, rel=1e-12)
        # a purchase before the registration counts, with the customer's earliest known
        # attributes (the customer registered in 1998 and churned after the cut-off)
        (late,) = [r for r in inputs["rows"] if r["customer_key"] == key[s.late]]
        assert (late["repeat_purchase_days"], late["age_days"]) == (3, 272 - 20)
        assert late["lifecycle_stage"] == "customer"

        fitted = get("/clv", as_of=AS_OF_TEXT, horizon_weeks=52)
        assert fitted["as_of"] == AS_OF_TEXT and fitted["time_unit"] == "week"
        assert fitted["horizon_weeks"] == 52 and fitted["customers_fitted"] == len(expected)
        usd = fitted["currencies"]["USD"]
        assert usd["customers"] == usd["customers_fitted"] == len(expected)
        # the same inputs in the same (customer) order: the same fit
        assert usd["bgnbd"] == own["bgnbd"]
        for name in ("p", "q", "v"):
            assert usd["gamma_gamma"][name] == pytest.approx(own["gamma_gamma"][name], rel=1e-6)
        assert usd["total_clv"] == pytest.approx(own["total_clv"], rel=1e-6)

        # the default cut-off is now (not the latest event, June 1998), and it is echoed
        before = datetime.now(UTC)
        now_fit = get("/clv")
        after = datetime.now(UTC)
        echoed = datetime.fromisoformat(now_fit["as_of"])
        assert before - timedelta(seconds=1) <= echoed <= after + timedelta(seconds=1)
        assert now_fit["customers_fitted"] == len(expected) + 1  # the November buyer too

        # an unrelated interaction logged today does not move a fit with a cut-off
        log = Log(database_url, s.app.codec)
        log.emit(ie.InteractionLogged, uuid4(), datetime.now(UTC), customer_id=s.customers[0][0],
                 channel="call", direction="outbound", subject=None, body=None,
                 participants=None, duration_minutes=5, opportunity_id=None,
                 service_request_id=None)
        log.close()
        s.analytics.catch_up()
        again = get("/clv", as_of=AS_OF_TEXT, horizon_weeks=52)
        assert again["position"] == fitted["position"] + 1
        assert again["currencies"]["USD"]["bgnbd"] == usd["bgnbd"]
        assert again["currencies"]["USD"]["gamma_gamma"] == usd["gamma_gamma"]
        assert again["currencies"]["USD"]["total_clv"] == usd["total_clv"]

        # RFM and the classes answer as of the cut-off too, and say so
        rfm = get("/kpis/rfm", as_of=AS_OF_TEXT)
        assert rfm["as_of"] == AS_OF_TEXT and rfm["time_unit"] == "day"
        # every customer registered or buying by the cut-off: all of them (the one who
        # registered in 1998 bought before; the November buyer registered at the start)
        assert rfm["customers"] == len(s.customers)
        (late_rfm,) = [r for r in rfm["rows"] if r["customer_key"] == key[s.late]]
        assert (late_rfm["orders"], late_rfm["purchase_days"], late_rfm["recency_days"]) == (
            4, 4, 272 - 250)
        assert late_rfm["lifecycle_stage"] == "customer" and late_rfm["customer_class"] != "churned"
        (after_rfm,) = [r for r in rfm["rows"] if r["customer_key"] == key[s.after]]
        assert after_rfm["currency"] is None and after_rfm["orders"] == 0
        classes = get("/kpis/customer_classes", as_of=AS_OF_TEXT)
        assert classes["as_of"] == AS_OF_TEXT and classes["customers"] == len(s.customers)
        assert sum(r["customers"] for r in classes["rows"]) == len(s.customers)
        # a look-back window: only the purchases of the last 30 days before the cut-off
        recent = get("/kpis/rfm", as_of=AS_OF_TEXT, horizon_days=30)
        assert recent["horizon_days"] == 30
        window = {key[cid]: sum(1 for d in days if 242 < d <= 272) for cid, days in s.customers}
        assert {r["customer_key"]: r["orders"] for r in recent["rows"]} == window

        # the report: classes and lifetime value as of the cut-off, which it names
        r = client.get("/api/v1/analytics/report", params={"as_of": AS_OF_TEXT}, headers=analyst)
        assert r.status_code == 200 and "as of 1997-09-30T23:59 UTC" in r.text

        # bad input: 422 naming the parameter, nothing computed
        for path, params, field in (
                ("/clv", {"as_of": "1997-09-30T23:59:59"}, "as_of"),
                ("/clv", {"as_of": "yesterday"}, "as_of"),
                ("/kpis/win_rate", {"as_of": AS_OF_TEXT}, "as_of"),
                ("/kpis/clv_inputs", {"horizon_days": 30}, "horizon_days"),
                ("/kpis/rfm", {"horizon_days": 0}, "horizon_days"),
                ("/report", {"as_of": "1997-09-30"}, "as_of"),
                ("/kpis/rfm", {"as_of": "0001-01-01T00:00:00Z", "horizon_days": 5}, "as_of"),
                ("/clv", {"as_of": "0001-01-01T00:30:00+01:00"}, "as_of")):
            r = client.get(f"/api/v1/analytics{path}", params=params, headers=analyst)
            assert r.status_code == 422, (path, params, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert field in r.text, r.text

    # the views are as of now and carry their cut-off in the as_of column
    (row,) = q(s, "SELECT DISTINCT as_of FROM kpi_customer_classes")
    assert abs(row[0].replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=5)


def test_crm_analytics_clv_answers_as_of_the_cut_off(cdnow_system: Any, database_url: str) -> None:
    s = cdnow_system
    path = s.analytics.config.path
    env = {**os.environ, "CRM_DATABASE_URL": database_url, "CRM_DATA_DIR": str(path.parent),
           "CRM_MASTER_KEY": "5e" * 32, "CRM_JWT_SECRET": s.settings.jwt_secret.get_secret_value(),
           "CRM_LOG_FORMAT": "console"}

    def crm(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crm.cli", "analytics", "clv", *args],
                              env={**env, **extra}, cwd=ROOT, capture_output=True, text=True,
                              timeout=120)

    with serving(s.http_app()) as base:  # the file is owned here: the command calls the API
        owned = crm("--as-of", AS_OF_TEXT, "--top", "3", CRM_ANALYTICS_URL=base)
    assert owned.returncode == 0, owned.stderr
    via_api = json.loads(owned.stdout)
    assert via_api["as_of"] == AS_OF_TEXT and via_api["time_unit"] == "week"
    assert len(via_api["currencies"]["USD"]["customer_values"]) == 3
    s.analytics.close()  # nobody owns the file: the command opens it itself
    local = crm("--as-of", "1997-10-01T01:59:59+02:00", "--top", "3")
    assert local.returncode == 0, local.stderr
    itself = json.loads(local.stdout)
    assert itself["as_of"] == AS_OF_TEXT
    assert itself["currencies"]["USD"]["bgnbd"] == via_api["currencies"]["USD"]["bgnbd"]
    assert itself["customers_fitted"] == via_api["customers_fitted"] > 0
    bad = crm("--as-of", "1997-09-30")
    assert bad.returncode == 2 and "time zone" in bad.stderr
