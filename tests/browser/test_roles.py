"""The web UI for every role: each demo role opens every screen its menu offers (and a
customer page) at desktop and phone width, in English and Chinese, without a console error
or a refused API request; masked data renders; a customer page's panels load and fail on
their own; menus offer only the moves the API allows; the assignee is picked by name;
refused values are explained next to their field; a conflict reloads and says so."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from crm.demo import DEMO_USERS
from tests.browser.conftest import DESKTOP, PHONE, App, phone, wait
from tests.browser.test_ui import all_css, css, goto, sign_in, uid

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.browser]

#: Every demo role, by one of its users.
ROLES = {role: (username, role) for username, role, _, _ in reversed(DEMO_USERS)}

#: Counts the page's API requests and keeps every answer of 400 or more (set before any
#: script of the page runs, so the first requests of a page load are seen too).
WATCH_FETCH = """
window.__pending = 0; window.__failed = [];
const realFetch = window.fetch.bind(window);
window.fetch = async (input, init) => {
  const url = typeof input === "string" ? input : input.url;
  window.__pending++;
  try {
    const r = await realFetch(input, init);
    if (r.status >= 400) window.__failed.push(`${(init && init.method) || "GET"} ${url} -> ${r.status}`);
    return r;
  } catch (e) {
    // A request the page itself cancelled (it moved on) is no failure.
    if (!(e && e.name === "AbortError")) window.__failed.push(`${(init && init.method) || "GET"} ${url} -> ${e}`);
    throw e;
  } finally {
    window.__pending--;
  }
};
"""


@pytest.fixture
def watched(page: Any) -> Any:
    """The page with every API request watched (``failed_requests``)."""
    script = page.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_FETCH})
    try:
        yield page
    finally:
        page.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})


def settled(page: Any) -> None:
    """Wait until no request is running and nothing shows as loading (twice in a row)."""
    quiet = 0

    def calm() -> bool:
        nonlocal quiet
        idle = page.execute_script(
            "return (window.__pending === 0) && !document.querySelector('.loading, [aria-busy=true]')"
            " && !!document.querySelector('main.content, main.signin')")
        quiet = quiet + 1 if idle else 0
        return quiet >= 3

    wait(calm, 20, "the page to settle")


def problems(page: Any) -> list[str]:
    """Refused API requests and console errors since the last call."""
    failed = page.execute_script("const f = window.__failed || []; window.__failed = []; return f;")
    errors = [f"console: {e['message']}" for e in page.get_log("browser") if e["level"] == "SEVERE"]
    return [f"request: {f}" for f in failed] + errors


def open_screen(page: Any, app: App, path: str) -> list[str]:
    goto(page, app, path)
    settled(page)
    found = problems(page)
    body = css(page, "main").text
    if "***" in body:
        found.append("a masked value shown as ***")
    if not body.strip():
        found.append("an empty screen")
    if "TypeError" in body or "is not a function" in body:
        found.append(f"a script error on the screen: {body[:200]}")
    return found


def sweep_role(page: Any, app: App, who: tuple[str, str], width: str) -> tuple[list[str], int]:
    """Every screen of the role's menu and its first customer's page: what went wrong."""
    sign_in(page, app, who)  # onto the previous user's screen: the role's first one is shown
    settled(page)
    out = [f"{who[1]} {width} sign-in: {p}" for p in problems(page)]
    links = [a.get_attribute("href") or "" for a in all_css(page, "nav a")]
    paths = [link.removeprefix(app.base_url) for link in links]
    assert paths, f"{who[1]} has no screen"
    seen = 0
    for path in paths:
        out += [f"{who[1]} {width} {path}: {p}" for p in open_screen(page, app, path)]
        seen += 1
    goto(page, app, "/customers")
    first = wait(lambda: css(page, "[data-testid=customer-list] tbody tr a"), what="a customer")
    href = (first.get_attribute("href") or "").removeprefix(app.base_url)
    out += [f"{who[1]} {width} {href}: {p}" for p in open_screen(page, app, href)]
    wide = page.execute_script("return document.documentElement.scrollWidth")
    if width.startswith("phone") and wide > PHONE[0]:
        out.append(f"{who[1]} {width} {href}: {wide} px wide on a {PHONE[0]} px phone")
    return out, seen + 1


def test_every_role_opens_every_screen_of_its_menu_without_an_error(watched: Any, app: App) -> None:
    page = watched
    found: list[str] = []
    views = 0
    started = time.monotonic()
    # English at desktop and phone width, Chinese at phone width.
    for width, locale in (("desktop", "en"), ("phone", "en"), ("phone zh", "zh-CN")):
        if width.startswith("phone"):
            phone(page)
        else:
            page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
            page.set_window_size(*DESKTOP)
        page.execute_script(f"localStorage.setItem('crm.locale', '{locale}')")
        for who in ROLES.values():
            problems_of_role, n = sweep_role(page, app, who, width)
            found += problems_of_role
            views += n
    assert not found, json.dumps(found, indent=1, ensure_ascii=False)
    assert views >= 3 * (len(ROLES) + 1)
    print(f"swept {views} views in {time.monotonic() - started:.0f} s")


def test_each_role_is_offered_only_screens_the_api_allows(page: Any, app: App) -> None:
    menus = {}
    for role in ("marketing", "service_agent", "data_admin", "analyst"):
        sign_in(page, app, ROLES[role])
        menus[role] = [a.text for a in all_css(page, "nav a")]
    assert menus == {"marketing": ["Customers"], "service_agent": ["Service queue", "My tasks", "Customers"],
                     "data_admin": ["Customers", "My tasks"], "analyst": ["Dashboard", "Customers"]}, menus
    # And the API agrees: marketing may not read tasks (so no "My tasks" is offered).
    r = app.client.get("/api/v1/tasks", params={"mine": "true"}, headers=app.headers("marketing"))
    assert r.status_code == 403


def test_an_analyst_sees_a_customer_with_personal_data_hidden(page: Any, app: App) -> None:
    customer = app.get("/api/v1/customers", sort="created_at", limit=1)["items"][0]
    masked = app.get(f"/api/v1/customers/{customer['id']}", "analyst")
    assert masked["contacts"] and all(c["value"] == "***" and c["kind"] for c in masked["contacts"])
    sign_in(page, app, ROLES["analyst"])
    goto(page, app, f"/customers/{customer['id']}")
    name = wait(lambda: css(page, "[data-testid=customer-name]"), what="the customer page")
    assert "hidden" in name.text
    contacts = css(page, ".contacts").text
    assert contacts.count("hidden") >= len(customer["contacts"]), contacts
    assert "***" not in css(page, "main").text
    assert customer["name"] not in css(page, "main").text
    Select(css(page, "[data-testid=language]")).select_by_value("zh-CN")
    wait(lambda: "已隐藏" in css(page, "[data-testid=customer-name]").text, what="the Chinese label")
    Select(css(page, "[data-testid=language]")).select_by_value("en")


def test_a_customer_page_shows_only_readable_panels_each_loading_on_its_own(page: Any, app: App) -> None:
    customer = app.get("/api/v1/customers", sort="created_at", limit=1)["items"][0]
    sign_in(page, app, ROLES["service_agent"])
    goto(page, app, f"/customers/{customer['id']}")
    wait(lambda: css(page, "[data-testid=related-requests] ul.rows"), what="the service requests")
    assert not all_css(page, "[data-testid=related-opportunities]"), "a panel the role may not read"
    wait(lambda: css(page, "[data-testid=related-tasks] ul.rows"), what="the tasks")
    wait(lambda: css(page, "[data-testid=related-purchases] ul.rows"), what="the purchases")
    # One list that cannot be read leaves the others as they are.
    page.execute_cdp_cmd("Network.enable", {})
    page.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/api/v1/tasks?*"]})
    try:
        page.refresh()
        failed = wait(lambda: css(page, "[data-testid=related-tasks] [data-testid=section-failed]"),
                      what="the tasks' own message")
        assert failed.text.startswith("This section could not be loaded.")
        wait(lambda: css(page, "[data-testid=related-requests] ul.rows"), what="the requests still there")
        wait(lambda: css(page, "[data-testid=related-purchases] ul.rows"), what="the purchases still there")
        assert css(page, "[data-testid=customer-name]").text == customer["name"]
    finally:
        page.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        page.execute_cdp_cmd("Network.disable", {})
    page.get_log("browser")  # the blocked request's own console line


def test_a_closed_deal_is_offered_no_move_and_an_open_one_only_allowed_moves(page: Any, app: App) -> None:
    rep = uid(("rep", "sales_rep"))
    lost = app.get("/api/v1/opportunities", owner_id=rep, pipeline="default", status="lost", limit=1)["items"]
    if not lost:  # the demo's dice left none: lose one, as a rep would
        deal = app.get("/api/v1/opportunities", owner_id=rep, pipeline="default", status="open", limit=1)["items"][0]
        r = app.client.post(f"/api/v1/opportunities/{deal['id']}/lost", json={"loss_reason": "price"},
                            headers=app.headers("rep", **{"If-Match": f'"{deal["version"]}"'}))
        assert r.status_code == 200, r.text
        lost = [app.get(f"/api/v1/opportunities/{deal['id']}", min_position=r.json()["position"])]
    sign_in(page, app, ROLES["sales_rep"])
    goto(page, app, "/pipeline")
    card = wait(lambda: css(page, f"[data-testid=column-lost] [data-id='{lost[0]['id']}']"), what="the lost deal")
    options = [o.get_attribute("value") for o in card.find_elements(By.CSS_SELECTOR, "select.move option")]
    assert options == ["", "qualification", "needs_analysis", "proposal", "negotiation"], options
    # The API agrees: a lost deal is not won.
    r = app.client.post(f"/api/v1/opportunities/{lost[0]['id']}/won", json={},
                        headers=app.headers("rep", **{"If-Match": f'"{lost[0]["version"]}"'}))
    assert r.status_code == 409, r.text
    negotiation = all_css(page, "[data-testid=column-negotiation] [data-testid=deal]")
    if negotiation:
        options = [o.get_attribute("value") for o in negotiation[0].find_elements(By.CSS_SELECTOR, "select.move option")]
        assert options == ["", "proposal", "won", "lost"], options
    qualification = all_css(page, "[data-testid=column-qualification] [data-testid=deal]")
    if qualification:
        options = [o.get_attribute("value") for o in qualification[0].find_elements(By.CSS_SELECTOR, "select.move option")]
        assert options == ["", "needs_analysis", "proposal", "negotiation", "won", "lost"], options


def test_a_service_request_is_assigned_by_typing_a_name(page: Any, app: App) -> None:
    request = app.get("/api/v1/service-requests", status=["open", "in_progress", "waiting_on_customer"],
                      sort="priority", limit=1)["items"][0]
    manager = uid(("manager", "manager"))
    sign_in(page, app, ROLES["service_agent"])
    goto(page, app, f"/service?request={request['id']}")
    picker = wait(lambda: css(page, "[data-testid=assignee-picker] input"), what="the assignee picker")
    picker.send_keys("maria")
    option = wait(lambda: css(page, f".picker-list li[data-id='{manager}']"), what="Maria Manager offered")
    assert "Maria Manager" in option.text
    option.click()
    assert picker.get_attribute("value") == "Maria Manager"
    css(page, "[data-testid=assign]").click()

    def assigned() -> bool:
        data = app.get(f"/api/v1/service-requests/{request['id']}/current")["data"]
        return data["assignee_id"] == manager  # type: ignore[no-any-return]

    wait(assigned, what="the request assigned to the manager")
    wait(lambda: "Maria Manager" in css(page, "[data-testid=request-panel]").text, what="the new assignee shown")
    # Typing a name and not choosing assigns nobody (no id pasted, no pattern error).
    picker.send_keys(Keys.CONTROL, "a")
    picker.send_keys("nobody by this name")
    wait(lambda: "No one matches." in css(page, ".picker-list").text, what="no match")
    assert not css(page, "[data-testid=assign]").is_enabled()


def test_a_refused_value_is_explained_next_to_its_field_and_a_conflict_reloads(page: Any, app: App) -> None:
    rep = uid(("rep", "sales_rep"))
    customer = app.get("/api/v1/customers", owner_id=rep, sort="-created_at", limit=1)["items"][0]
    cid = customer["id"]
    sign_in(page, app, ROLES["sales_rep"])
    goto(page, app, f"/customers/{cid}")
    wait(lambda: css(page, "[data-testid=edit-details]"), what="the customer page").click()
    country = wait(lambda: css(page, "[data-testid=details-form] input[name=country]"), what="the form")
    country.send_keys(Keys.CONTROL, "a")
    country.send_keys("germany")
    css(page, "[data-testid=save-details]").click()
    message = wait(lambda: css(page, "[data-testid=field-error-country]"), what="the message at the country")
    assert message.text == ("Please check Country: use a two-letter country code in capitals, such as DE or CN.")
    assert country.get_attribute("aria-invalid") == "true"
    assert not [t.text for t in all_css(page, ".toast") if "pattern" in t.text or "String" in t.text]
    css(page, "[data-testid=edit-details]").click()  # cancel

    # Someone else changes the record; the lifecycle change made on the old version is
    # refused (409): the page reloads and says so, in words.
    loaded = int(css(page, "[data-testid=customer-page]").get_attribute("data-version") or 0)
    r = app.client.post(f"/api/v1/customers/{cid}/tags", json={"tag": "conflict"}, headers=app.headers("manager"))
    assert r.status_code in (200, 201), r.text
    stage = Select(css(page, "[data-testid=lifecycle-select]"))
    stage.select_by_index(1)
    form = css(page, "[data-testid=lifecycle-select]").find_element(By.XPATH, "./ancestor::form")
    form.find_element(By.CSS_SELECTOR, "input[required]").send_keys("checked the contract")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    toast = wait(lambda: css(page, ".toast.error"), what="the conflict message")
    assert toast.text.startswith("Someone else changed this record meanwhile."), toast.text
    wait(lambda: int(css(page, "[data-testid=customer-page]").get_attribute("data-version") or 0) > loaded,
         what="the reloaded record")
    page.get_log("browser")  # the expected 409 and 422 are the network's


def test_counts_names_and_links(page: Any, app: App) -> None:
    rep = ("rep", "sales_rep")
    target = app.get("/api/v1/customers", owner_id=uid(rep), sort="created_at", limit=1)["items"][0]
    fragment = target["emails"][0].split("@")[1].split(".")[0]
    sign_in(page, app, rep)
    goto(page, app, f"/customers?q={fragment}")
    wait(lambda: css(page, "[data-testid=total]").text == "1 result", what="one result, singular")
    # A task names its customer.
    tasks = app.get("/api/v1/tasks", "rep", mine="true", status="open", sort="due_at", limit=100)["items"]
    with_customer = next(x for x in tasks if x["customer_id"])
    name = app.get(f"/api/v1/customers/{with_customer['customer_id']}", "rep")["name"]
    goto(page, app, "/tasks")
    item = wait(lambda: css(page, f"[data-testid=tasks] li[data-id='{with_customer['id']}']"), what="the task")
    assert item.find_element(By.CSS_SELECTOR, "a").text == name
    # A customer page's deals, requests and tasks are links.
    deal = app.get("/api/v1/opportunities", owner_id=uid(rep), pipeline="default", status="open",
                   sort="-amount", limit=1)["items"][0]
    goto(page, app, f"/customers/{deal['customer_id']}")
    link = wait(lambda: css(page, f"[data-testid=related-opportunities] a[href='/pipeline?deal={deal['id']}']"),
                what="the deal's link")
    link.click()
    wait(lambda: css(page, f"[data-testid=deal][data-id='{deal['id']}'].highlight"), what="the deal on the board")
