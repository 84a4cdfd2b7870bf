"""Property-based tests of the served HTTP API from its own OpenAPI document (schemathesis).

Every operation gets generated requests, sent twice: with an admin's valid token and with
none. With the token: no 5xx, and every response conforms to the schema the document
declares for it. Without: nothing answers 2xx but the few public routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.e2e.test_http import serving

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

#: Operations anyone may call: sign-in, the survey link (its token is in the URL), the
#: probes, and signing a browser out (no cookie: nothing to end); everything else needs
#: credentials (/metrics its own token).
PUBLIC = {
    ("POST", "/api/v1/auth/token"),
    ("POST", "/api/v1/auth/session"),
    ("DELETE", "/api/v1/auth/session"),
    ("GET", "/api/v1/survey/{token}"),
    ("POST", "/api/v1/survey/{token}"),
    ("GET", "/health"),
    ("GET", "/ready"),
}
EXAMPLES = 12  # generated requests per operation (each sent with and without a token)


@dataclass
class Tally:
    operations: int = 0
    with_token: int = 0
    without_token: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@pytest.fixture
def served_schema(make_system: Any) -> Iterator[tuple[Any, str, str]]:
    # limits high enough for a few thousand requests in a few minutes from one caller
    system = make_system(rate_limit_per_second=100_000, rate_limit_burst=100_000,
                         login_rate_limit_per_minute=100_000, login_rate_limit_burst=100_000)
    system.start_projections()
    app = system.http_app()
    with serving(app) as base:
        served = httpx.get(f"{base}/openapi.json", timeout=60)
        assert served.status_code == 200, served.text
        schema = schemathesis.openapi.from_dict(served.json())
        yield schema, base, system.tokens.issue("ops", "admin")


def _check(tally: Tally, operation: Any, base: str, token: str) -> None:
    @given(case=operation.as_strategy())
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                         phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        key = f"{operation.method.upper()} {operation.path}"
        # the credentials are ours to give: drop generated ones
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() not in ("authorization", "x-api-key")}
        response = case.call(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        tally.with_token += 1
        tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 -- every finding is reported
            tally.failures.append(f"{key} with a token: {str(e).splitlines()[0][:300]}")
        anonymous = case.call(base_url=base, headers={"Authorization": ""}, timeout=30)
        tally.without_token += 1
        if anonymous.status_code >= 500:
            tally.failures.append(f"{key} without a token: {anonymous.status_code}")
        if anonymous.status_code < 300 and (operation.method.upper(), operation.path) not in PUBLIC:
            tally.failures.append(f"{key} without a token answered {anonymous.status_code}")

    run()


def test_every_operation_holds_with_and_without_credentials(served_schema: tuple[Any, str, str]) -> None:
    schema, base, token = served_schema
    tally = Tally()
    for result in schema.get_all_operations():
        operation = result.ok()
        tally.operations += 1
        _check(tally, operation, base, token)
    print(f"schemathesis: {tally.operations} operations, {tally.with_token} requests with a token, "
          f"{tally.without_token} without; statuses {dict(sorted(tally.statuses.items()))}; "
          f"{len(tally.failures)} failures")
    assert tally.operations > 50
    assert not tally.failures, "\n".join(sorted(set(tally.failures))[:80])
