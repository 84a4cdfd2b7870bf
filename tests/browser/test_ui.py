"""The web UI in a real headless Chromium against the real app (PostgreSQL, demo data):
sign-in, search, a concurrent edit's 409 and re-apply, dragging a deal across stages,
resolving a service request, the timeline and the as-of view, switching languages."""

from __future__ import annotations

import re

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from aggregates.user import user_id
from crm.demo import DEMO_PASSWORD
from tests.browser.conftest import PHONE, App, phone, wait

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.browser]

#: Demo users (crm/demo.py), all with the demo password: (username, role).
REP = ("rep", "sales_rep")
AGENT = ("agent", "service_agent")
AUDITOR = ("auditor", "auditor")
MANAGER = ("manager", "manager")
ADMIN = ("admin", "admin")


def uid(who: tuple[str, str]) -> str:
    return str(user_id(who[0]))


def css(driver: Any, selector: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver: Any, selector: str) -> list[WebElement]:
    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def sign_in(page: Any, app: App, who: tuple[str, str], password: str = DEMO_PASSWORD) -> None:
    """Sign in as ``who`` through the sign-in screen and wait for the navigation."""
    username, _ = who
    goto(page, app, "/")  # the page first asks whether the browser's session cookie signs it in
    if all_css(page, "[data-testid=who]"):  # someone else is signed in
        css(page, "[data-testid=sign-out]").click()
    box = wait(lambda: css(page, "input[name=username]"), what="the sign-in form")
    box.send_keys(username)
    css(page, "input[name=password]").send_keys(password + Keys.ENTER)
    wait(lambda: (css(page, "[data-testid=who]").get_attribute("title") or "").startswith(username + " "),
         what=f"{username} signed in")


def goto(page: Any, app: App, path: str) -> None:
    """Load ``path`` afresh and wait until the page knows whether its session cookie signs
    it in (the sign-in form or the signed-in page)."""
    page.get(app.base_url + path)
    _settled(page)


def _settled(page: Any) -> None:
    wait(lambda: all_css(page, "[data-testid=who]") or all_css(page, "input[name=username]"),
         what="the sign-in form or a signed-in page")


def a_customer_of(app: App, owner: str) -> dict[str, Any]:
    items = app.get("/api/v1/customers", owner_id=owner, sort="created_at", limit=1)["items"]
    assert items, f"the demo has no customer of {owner}"
    return items[0]  # type: ignore[no-any-return]


def test_sign_in_shows_the_role_s_screens(page: Any, app: App) -> None:
    css(page, "input[name=username]").send_keys("rep")
    css(page, "input[name=password]").send_keys("not-the-password" + Keys.ENTER)
    wait(lambda: "Wrong username or password" in css(page, "[role=alert]").text, what="the refusal")
    sign_in(page, app, REP)
    assert "Rita Rep" in css(page, "[data-testid=who]").text
    nav = [a.text for a in all_css(page, "nav a")]
    assert nav == ["My tasks", "Customers", "Pipeline"]
    sign_in(page, app, AUDITOR)
    assert [a.text for a in all_css(page, "nav a")] == ["Audit", "Customers"]


def test_find_a_customer_by_typing_in_search(page: Any, app: App) -> None:
    target = a_customer_of(app, uid(REP))
    fragment = target["emails"][0].split("@")[1].split(".")[0]  # e.g. "wang12": one customer
    sign_in(page, app, REP)
    goto(page, app, "/customers")
    wait(lambda: len(all_css(page, "[data-testid=customer-list] tbody tr")) > 1, what="the list")
    box = css(page, "[data-testid=customer-search]")
    for ch in fragment:
        box.send_keys(ch)
    wait(lambda: [r.text.split("\n")[0] for r in all_css(page, "[data-testid=customer-list] tbody tr")]
         == [target["name"]], what=f"only {target['name']} in the list")
    assert page.current_url.endswith(f"/customers?q={fragment}")
    css(page, "[data-testid=customer-list] tbody tr a").click()
    wait(lambda: css(page, "[data-testid=customer-name]").text == target["name"], what="the customer page")


def test_a_record_out_of_reach_is_not_found(page: Any, app: App) -> None:
    theirs = a_customer_of(app, uid(REP))
    sign_in(page, app, ("rep2", "sales_rep"))
    goto(page, app, f"/customers/{theirs['id']}")
    wait(lambda: "Not found, or not yours to see." in css(page, "[role=alert]").text, what="the 404")


def test_a_concurrent_edit_is_shown_and_re_applied(page: Any, app: App) -> None:
    target = a_customer_of(app, uid(REP))
    cid = target["id"]
    sign_in(page, app, REP)
    goto(page, app, f"/customers/{cid}")
    wait(lambda: css(page, "[data-testid=customer-name]").text == target["name"], what="the customer page")
    css(page, "[data-testid=edit-details]").click()
    industry = css(page, "[data-testid=details-form] input[name=industry]")
    industry.send_keys(Keys.CONTROL, "a")
    industry.send_keys("aerospace")

    # Meanwhile someone else changes the country, through the API.
    current = app.client.get(f"/api/v1/customers/{cid}/current", headers=app.headers(*MANAGER)).json()
    new_country = "NO" if current["data"]["country"] != "NO" else "FI"
    r = app.client.patch(f"/api/v1/customers/{cid}", json={"country": new_country, "reason": "moved office"},
                         headers=app.headers(*MANAGER, **{"If-Match": f'"{current["version"]}"'}))
    assert r.status_code == 200, r.text

    css(page, "[data-testid=save-details]").click()
    conflict = wait(lambda: css(page, "[data-testid=conflict]"), what="the conflict panel")
    text = conflict.text
    assert new_country in text and "aerospace" in text and "moved office" in text and "Maria Manager" in text
    css(page, "[data-testid=reapply]").click()
    wait(lambda: css(page, "[data-testid=details] [data-field=industry]").text == "aerospace",
         what="the re-applied industry")
    assert css(page, "[data-testid=details] [data-field=country]").text == new_country
    after = app.client.get(f"/api/v1/customers/{cid}/current", headers=app.headers(*MANAGER)).json()
    assert after["data"]["industry"] == "aerospace" and after["data"]["country"] == new_country
    assert after["version"] == current["version"] + 2


def _drag(page: Any, card: WebElement, column: WebElement) -> None:
    actions = ActionChains(page, duration=50)
    actions.move_to_element(card).click_and_hold()
    actions.move_by_offset(12, 12)  # past the drag threshold
    actions.move_to_element(column).move_by_offset(0, 40)
    actions.release().perform()


def test_drag_an_opportunity_to_another_stage(page: Any, app: App) -> None:
    deals = app.get("/api/v1/opportunities", owner_id=uid(REP), pipeline="default", status="open",
                    stage="qualification", sort="-amount", limit=1)["items"]
    if not deals:  # the demo's dice left none there: open one, as a rep would
        customer = a_customer_of(app, uid(REP))
        r = app.client.post("/api/v1/opportunities", json={
            "customer_id": customer["id"], "title": "Board deal", "amount": "999999", "currency": "EUR"},
            headers=app.headers(*REP))
        assert r.status_code == 201, r.text
        deals = [app.get(f"/api/v1/opportunities/{r.json()['id']}", min_position=r.json()["position"])]
    deal = deals[0]
    before = {c["stage"]: c["count"] for c in app.get("/api/v1/opportunities/board", owner_id=uid(REP))["stages"]}
    sign_in(page, app, REP)
    goto(page, app, "/pipeline")
    card = wait(lambda: css(page, f"[data-testid=column-qualification] [data-id='{deal['id']}']"), what="the card")
    target = css(page, "[data-testid=column-proposal]")
    page.execute_script("arguments[0].scrollIntoView({inline: 'center', block: 'nearest'})", target)
    _drag(page, card, target)
    wait(lambda: css(page, f"[data-testid=column-proposal] [data-id='{deal['id']}']"), what="the card in proposal")
    wait(lambda: css(page, "[data-testid=count-proposal]").text == str(before["proposal"] + 1), what="the new count")
    assert css(page, "[data-testid=count-qualification]").text == str(before["qualification"] - 1)
    record = app.get(f"/api/v1/opportunities/{deal['id']}/current")
    assert record["data"]["stage"] == "proposal" and record["version"] == deal["version"] + 1


def test_resolve_a_service_request(page: Any, app: App) -> None:
    open_requests = app.get("/api/v1/service-requests", status=["open", "in_progress"], sort="priority", limit=1)["items"]
    assert open_requests, "the demo has no open service request"
    request = open_requests[0]
    sign_in(page, app, AGENT)
    goto(page, app, "/service")
    css(page, "[data-testid=scope-all]").click()
    row = wait(lambda: css(page, f"[data-testid=request-row][data-id='{request['id']}']"), what="the request")
    row.click()
    wait(lambda: css(page, "[data-testid=request-panel]"), what="the request panel")
    css(page, "[data-testid=resolution]").send_keys("Restarted the sync; confirmed with the customer.")
    css(page, "[data-testid=resolve]").click()
    wait(lambda: css(page, "[data-testid=request-status]").text == "Resolved", what="the resolved status")
    record = app.get(f"/api/v1/service-requests/{request['id']}/current")
    assert record["data"]["status"] == "resolved"
    assert record["data"]["resolution"] == "Restarted the sync; confirmed with the customer."
    # The queue behind the dialog was read again after the write: the request has left it.
    page.find_element(By.CSS_SELECTOR, "dialog header button").click()
    wait(lambda: not all_css(page, f"[data-testid=request-row][data-id='{request['id']}']"),
         what="the request to leave the open queue")


def test_the_queue_shows_the_sla_time_left_set_by_the_automation(page: Any, app: App) -> None:
    # A request comes in; the automation (running in the app, with the demo's rules) routes
    # it and records its SLA, and the queue's read model carries the due that applies now.
    customer = a_customer_of(app, uid(REP))
    r = app.client.post("/api/v1/service-requests", headers=app.headers("agent"), json={
        "customer_id": customer["id"], "channel": "phone", "type": "question", "priority": "low",
        "subject": "Where is my invoice?"})
    assert r.status_code == 201, r.text
    opened = r.json()

    def routed() -> dict[str, Any] | None:
        items = app.get("/api/v1/service-requests", customer_id=customer["id"], limit=100)["items"]
        return next((i for i in items if i["id"] == opened["id"] and i["sla_due_at"]), None)

    request = wait(routed, 60, "the automation to set the new request's SLA")
    assert datetime.fromisoformat(request["sla_due_at"]) > datetime.now(UTC)  # a day for a low priority
    events = app.get(f"/api/v1/service-requests/{opened['id']}/events")["items"]
    sla = next(e for e in events if e["type"] == "ServiceRequestSlaSet")
    assert sla["actor_id"] == "automation" and sla["reason"].startswith("SLA policy for low priority")
    sign_in(page, app, ADMIN)
    goto(page, app, "/service")
    css(page, "[data-testid=scope-all]").click()
    badge = wait(lambda: css(page, f"[data-testid=request-row][data-id='{request['id']}'] [data-testid=sla-left]"),
                 what="the request's SLA badge")
    assert badge.text.endswith(" left"), badge.text  # e.g. "3 h 12 min left"
    assert badge.get_attribute("title"), "the due time is in the badge's title"
    # Priority first, then the soonest due within a priority (none last).
    known = {r["id"]: r for r in app.get("/api/v1/service-requests", limit=200,
                                         status=["open", "in_progress", "waiting_on_customer", "reopened"])["items"]}
    rank = {"urgent": 0, "high": 1, "normal": 2, "low": 3}
    shown = [known[str(r.get_attribute("data-id"))] for r in all_css(page, "[data-testid=request-row]")]
    keys = [(rank[r["priority"]], r["sla_due_at"] is None,
             datetime.fromisoformat(r["sla_due_at"]) if r["sla_due_at"] else None) for r in shown]
    assert len(keys) > 3
    assert all((a[0], a[1]) < (b[0], b[1]) or (a[:2] == b[:2] and (a[2] is None or b[2] is None or a[2] <= b[2]))
               for a, b in zip(keys, keys[1:], strict=False)), keys
    css(page, f"[data-testid=request-row][data-id='{request['id']}']").click()
    times = wait(lambda: css(page, "[data-testid=sla-times]"), what="the SLA times in the panel").text
    assert "First response due" in times and "Resolution due" in times


def _refreshes(page: Any) -> int:
    """How many times this page asked for a new token through the session cookie."""
    return int(page.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter((e) => e.name.endsWith('/api/v1/auth/session/refresh')).length"))


def _cookies(page: Any, app: App) -> dict[str, dict[str, Any]]:
    """The browser's cookies for the session's path (the driver's own list shows only those
    of the current page's path)."""
    found = page.execute_cdp_cmd("Network.getCookies", {"urls": [app.base_url + "/api/v1/auth/session"]})
    return {c["name"]: c for c in found["cookies"]}


def _stored(page: Any) -> dict[str, str]:
    """Everything the page keeps in localStorage and sessionStorage."""
    return dict(page.execute_script(
        "const out = {};"
        "for (const [name, store] of [['local', localStorage], ['session', sessionStorage]])"
        "  for (let i = 0; i < store.length; i++) out[name + ':' + store.key(i)] = store.getItem(store.key(i));"
        "return out;"))


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_reload_keeps_the_user_signed_in_with_no_token_in_storage(page: Any, app: App, size: str) -> None:
    if size == "phone":
        phone(page)
    sign_in(page, app, REP)
    cookies = _cookies(page, app)
    refresh, csrf = cookies["crm_refresh"], cookies["crm_csrf"]
    assert refresh["httpOnly"] and refresh["sameSite"] == "Strict" and refresh["path"] == "/api/v1/auth/session"
    assert not csrf["httpOnly"] and csrf["sameSite"] == "Strict" and csrf["path"] == "/"
    # No token in storage: neither the access token (a JWT: "eyJ...") nor the session's secrets.
    for stored in (_stored(page), ):
        assert not [k for k, v in stored.items() if "eyJ" in v or refresh["value"] in v or csrf["value"] in v], stored
    assert "crm_refresh" not in page.execute_script("return document.cookie")  # no script reads it

    page.refresh()
    wait(lambda: (css(page, "[data-testid=who]").get_attribute("title") or "").startswith("rep "),
         what="still signed in after the reload")
    assert _refreshes(page) == 1
    goto(page, app, "/customers")  # another page of the app, loaded afresh: still signed in
    wait(lambda: all_css(page, "[data-testid=customer-list] tbody tr"), what="the customers")
    assert not [k for k, v in _stored(page).items() if "eyJ" in v], _stored(page)

    css(page, "[data-testid=sign-out]").click()
    wait(lambda: css(page, "input[name=username]"), what="the sign-in form")
    assert not _cookies(page, app), "the session's cookies are cleared"
    page.refresh()
    wait(lambda: css(page, "input[name=username]"), what="the sign-in form after the reload")
    assert not all_css(page, "[data-testid=who]")
    # The signed-out session's cookie is revoked on the server, not only cleared in the browser.
    r = app.client.post("/api/v1/auth/session/refresh", headers={
        "X-CSRF-Token": csrf["value"], "Cookie": f"crm_refresh={refresh['value']}; crm_csrf={csrf['value']}"})
    assert r.status_code == 401 and r.json()["type"].endswith("/session-ended"), r.text
    if size == "phone":
        width = page.execute_script("return document.documentElement.scrollWidth")
        assert width <= PHONE[0], f"the page is {width}px wide on a {PHONE[0]}px screen"


def test_a_working_session_is_refreshed_and_an_idle_one_goes_to_sign_in(page: Any, app: App) -> None:
    authenticator = app.http.state.authenticator
    lifetime = authenticator.access_token_ttl
    authenticator.access_token_ttl = timedelta(seconds=12)  # tokens of this test live 12 s
    try:
        sign_in(page, app, REP)
        goto(page, app, "/tasks")  # loading a page is activity: the session is refreshed in time
        wait(lambda: all_css(page, "[data-testid=who]"), what="signed in")
        assert _refreshes(page) == 1  # the start-up refresh through the cookie
        wait(lambda: _refreshes(page) >= 2, 15, "the refresh before the token's end")
        assert all_css(page, "[data-testid=who]"), "still signed in"
        # No activity since: the session ends when the refreshed token does, with a message.
        wait(lambda: css(page, "input[name=username]"), 20, "the sign-in form")
        assert "Your session has ended; please sign in again." in css(page, "main.signin").text
        # ... and on the server too: a reload finds the cookie no longer refreshes.
        page.refresh()
        wait(lambda: css(page, "input[name=username]"), what="the sign-in form after the reload")
        assert not all_css(page, "[data-testid=who]")
    finally:
        authenticator.access_token_ttl = lifetime


def test_the_pages_hold_under_the_content_security_policy(page: Any, app: App) -> None:
    for path in ("/", "/customers", "/docs", "/redoc", "/api/v1/customers", "/health", "/assets/nothing.js"):
        r = app.client.get(path)
        policy = r.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy, path
        assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
    sign_in(page, app, MANAGER)
    for path in ("/dashboard", "/pipeline", "/service"):
        goto(page, app, path)
        wait(lambda: all_css(page, "[data-testid=who]"), what=f"{path} signed in")
        assert not page.execute_script("return window.__cspViolations"), path
    # The API docs run under the policy too, every file from this server.
    page.get(app.base_url + "/docs")  # not a page of the app: no session to wait for
    wait(lambda: "CRM core API" in css(page, ".swagger-ui .info .title").text, 20, "Swagger UI")
    wait(lambda: all_css(page, ".swagger-ui .opblock"), what="the operations")
    assert not page.execute_script("return window.__cspViolations")
    page.get(app.base_url + "/redoc")
    wait(lambda: "CRM core API" in css(page, "h1").text, 20, "ReDoc")
    assert not page.execute_script("return window.__cspViolations")
    hosts = page.execute_script("return performance.getEntriesByType('resource').map((e) => new URL(e.name).host)")
    assert set(hosts) <= {app.base_url.split("//")[1]}, hosts


def test_the_timeline_shows_older_events_page_by_page(page: Any, app: App) -> None:
    customer = a_customer_of(app, uid(REP))
    cid = customer["id"]
    for i in range(55):  # more than a page of the timeline (50)
        r = app.client.post("/api/v1/interactions", headers=app.headers("rep"), json={
            "customer_id": cid, "channel": "note", "direction": "internal", "subject": f"Note {i}",
            "body": f"Note number {i}"})
        assert r.status_code == 201, r.text
    total = 0
    before = None
    while True:
        page_ = app.get(f"/api/v1/customers/{cid}/timeline", order="newest", limit=200,
                        **({"before": before} if before else {}))
        total += len(page_["items"])
        if page_["next_before"] is None:
            break
        before = page_["next_before"]
    assert total > 55
    sign_in(page, app, REP)
    goto(page, app, f"/customers/{cid}")
    wait(lambda: len(all_css(page, "[data-testid=timeline] > li")) == 50, what="the first page of the timeline")
    assert "Interaction logged" in css(page, "[data-testid=timeline] > li").text
    older = css(page, "[data-testid=timeline-older]")
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", older)
    older.click()
    wait(lambda: len(all_css(page, "[data-testid=timeline] > li")) == min(total, 100), what="the older page")
    if total <= 100:
        wait(lambda: not all_css(page, "[data-testid=timeline-older]"), what="no more to show")
    # The oldest entry is the customer's registration.
    while all_css(page, "[data-testid=timeline-older]"):
        button = css(page, "[data-testid=timeline-older]")
        page.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()
        wait(lambda: len(all_css(page, "[data-testid=timeline] > li")) > 0, what="more entries")
        page.implicitly_wait(0)
        wait(lambda: not all_css(page, ".timeline-pages .loading"), what="the page to load")
    wait(lambda: len(all_css(page, "[data-testid=timeline] > li")) == total, what="every entry")
    assert "Customer registered" in all_css(page, "[data-testid=timeline] > li")[-1].text


def test_a_change_shows_in_the_timeline_and_the_as_of_view(page: Any, app: App) -> None:
    items = app.get("/api/v1/customers", owner_id=uid(REP), sort="-created_at", limit=1)["items"]
    customer = items[0]
    cid = customer["id"]
    old_industry = customer["industry"] or "—"
    before_change = datetime.now(UTC)
    sign_in(page, app, REP)
    goto(page, app, f"/customers/{cid}")
    wait(lambda: css(page, "[data-testid=edit-details]"), what="the customer page").click()
    field = wait(lambda: css(page, "[data-testid=details-form] input[name=industry]"), what="the form")
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("shipbuilding")
    css(page, "[data-testid=details-form] input[name=reason]").send_keys("new annual report")
    css(page, "[data-testid=save-details]").click()
    wait(lambda: css(page, "[data-testid=details] [data-field=industry]").text == "shipbuilding", what="the saved value")
    def top_of_timeline() -> str:
        return str(css(page, "[data-testid=timeline] li").text)

    wait(lambda: "Customer details changed" in top_of_timeline() and "new annual report" in top_of_timeline()
         and "shipbuilding" in top_of_timeline() and "Rita Rep" in top_of_timeline(),
         what="the change on top of the timeline")

    sign_in(page, app, AUDITOR)
    goto(page, app, f"/audit/{cid}")
    wait(lambda: css(page, "[data-testid=as-of-record] [data-field=industry]").text == "shipbuilding",
         what="the record now")
    history = css(page, "[data-testid=timeline]").text
    assert "Customer details changed" in history and "new annual report" in history
    # One step back on the slider: the record as it was a day ago, before the change.
    slider = css(page, "[data-testid=as-of-slider]")
    slider.send_keys(Keys.ARROW_LEFT)
    wait(lambda: css(page, "[data-testid=as-of-record] [data-field=industry]").text == old_industry,
         what="the record as of before the change")
    assert datetime.fromisoformat(css(page, "[data-testid=as-of]").get_attribute("data-as-of") or "") < before_change
    assert int(css(page, "[data-testid=as-of-version]").text) < int(
        app.get(f"/api/v1/customers/{cid}/current")["version"])


def test_switch_language_to_chinese_and_back(page: Any, app: App) -> None:
    sign_in(page, app, MANAGER)
    goto(page, app, "/customers")
    wait(lambda: all_css(page, "[data-testid=customer-list] tbody tr"), what="the list")
    Select(css(page, "[data-testid=language]")).select_by_value("zh-CN")
    wait(lambda: "客户" in [a.text for a in all_css(page, "nav a")], what="the Chinese navigation")
    assert css(page, "h1").text == "客户"
    assert page.execute_script("return document.documentElement.lang") == "zh-CN"
    page.refresh()  # remembered
    wait(lambda: css(page, "h1").text == "客户", what="Chinese after a reload")
    # A customer's timeline names its events and fields in Chinese too.
    wait(lambda: all_css(page, "[data-testid=customer-list] tbody tr a"), what="the list after the reload")
    css(page, "[data-testid=customer-list] tbody tr a").click()
    wait(lambda: all_css(page, "[data-testid=timeline] > li"), what="the timeline")
    label = css(page, "[data-testid=timeline] li .tl-type").text
    assert re.search("[\u4e00-\u9fff]", label), label
    goto(page, app, "/customers")
    # Money in the record's currency, formatted for the locale (e.g. "€1,234.00" / "£" / "US$").
    Select(css(page, "[data-testid=language]")).select_by_value("en")
    wait(lambda: css(page, "h1").text == "Customers", what="English again")


def test_the_navigation_collapses_on_a_phone(page: Any, app: App) -> None:
    phone(page)
    sign_in(page, app, MANAGER)
    goto(page, app, "/customers")
    nav = css(page, "nav")
    assert not nav.is_displayed()
    css(page, "[data-testid=menu]").click()
    wait(lambda: nav.is_displayed(), what="the opened menu")
    links = all_css(page, "nav a")
    links[[a.text for a in links].index("Pipeline")].click()
    wait(lambda: page.current_url.endswith("/pipeline"), what="the pipeline")
    assert not css(page, "nav").is_displayed()
    width = page.execute_script("return document.documentElement.scrollWidth")
    assert width <= PHONE[0], f"the page is {width}px wide on a {PHONE[0]}px screen"
