"""The real app with demo data, served on a free loopback port, and Debian's headless
Chromium driven by Selenium through /usr/bin/chromedriver (never a downloaded driver).

One app and one browser serve every test of the folder (package-scoped: building the demo
data and starting Chromium once keeps the folder short); each test signs in afresh.
A missing Chromium, driver or UI build fails the tests: they never skip.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from crm.demo import DEMO_PASSWORD
from tests.conftest import settings_for, truncate_crm_tables
from tests.e2e.test_http import serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WEB_DIST = Path(__file__).resolve().parents[2] / "web" / "dist"
DESKTOP = (1366, 800)
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""
PHONE = (390, 844)


@dataclass
class App:
    """The served app: its URL, and an API client that signs in as the demo's users."""

    base_url: str
    client: httpx.Client
    system: Any
    http: Any  # the served FastAPI app
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, username: str) -> str:
        if username not in self.tokens:
            r = self.client.post("/api/v1/auth/token", json={"username": username, "password": DEMO_PASSWORD})
            assert r.status_code == 200, r.text
            self.tokens[username] = r.json()["access_token"]
        return self.tokens[username]

    def headers(self, username: str = "admin", *_: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(username)}", **extra}

    def get(self, path: str, username: str = "admin", **params: Any) -> Any:
        r = self.client.get(path, params=params, headers=self.headers(username))
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="package")
def app(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    if not (WEB_DIST / "index.html").is_file():
        pytest.fail(f"the web UI is not built ({WEB_DIST}/index.html is missing): run scripts/setup",
                    pytrace=False)
    from commands.clock import SystemClock
    from crm.bootstrap import build, email_key
    from crm.demo import DemoLoader, write_demo_rules

    truncate_crm_tables(database_url)
    data = tmp_path_factory.mktemp("browser-data")
    # As `crm serve --demo`: the automation routes to the demo's people and sets SLAs.
    system = build(settings_for(database_url, data, audit_checkpoint_seconds=0,
                                automation_rules_file=write_demo_rules(data)))
    try:
        DemoLoader(system.app, email_key(system.settings), SystemClock(), customers=24).load()
        system.start_projections()
        assert system.read is not None
        head = system.app.recorder.max_notification_id() or 0
        assert system.read.wait_for(head, 60), "the read models did not catch up with the demo data"
        http = system.http_app()
        with serving(http) as base_url, httpx.Client(base_url=base_url, timeout=15) as client:
            yield App(base_url, client, system, http)
    finally:
        system.close()
        truncate_crm_tables(database_url)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing or shutil.which(str(CHROMEDRIVER)) is None:
        pytest.fail(f"the browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} "
                    "missing): scripts/setup installs them", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--lang=en-US", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    # Every page records the Content-Security-Policy violations it meets (a script given
    # by the driver itself, which the policy does not govern).
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_WATCH})
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(app: App, browser: Any) -> Iterator[Any]:
    """The browser on the app's sign-in page, signed out, in English, at desktop size."""
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.set_window_size(*DESKTOP)
    browser.get(app.base_url + "/")
    browser.execute_script("localStorage.clear(); sessionStorage.clear();")
    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})  # the session's too, whatever their path
    browser.get(app.base_url + "/")
    yield browser
    # Script errors and Content-Security-Policy violations fail the test; answers such as
    # the expected 409 are the network's.
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and e["source"] != "network"]
    assert not errors, json.dumps(errors, indent=1)
    assert not browser.execute_script("return window.__cspViolations"), "Content-Security-Policy violations"


def phone(driver: Any) -> None:
    """Emulate a phone's screen (a window cannot be made narrower than 500 px)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 1, "mobile": True})


def wait(condition: Any, timeout: float = 15.0, what: str = "the condition") -> Any:
    """Poll ``condition()`` until it returns something truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 -- the page is still changing
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f": {last!r}" if last else ""))
