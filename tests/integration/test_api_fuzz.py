"""Property-based fuzzing of the live API from its own OpenAPI document (schemathesis).

Every operation gets generated requests, valid and invalid (positive and negative modes), with
an admin token; each answer must be a documented status with a conforming body, headers and
content type, and never a 5xx.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.modes import GenerationMode

from tests.conftest import TestDatabase
from tests.integration.test_api_support import (
    ADMIN_TOKEN,
    CHANNEL_A,
    CHANNEL_B,
    Api,
    insert_signal,
    message,
    running_api,
    store_messages,
)
from tgstack.api.app import openapi_document as document

MAX_EXAMPLES = 50


def _within_cross_field_rules(case: Any) -> Any:
    """Make a schema-valid request valid by the rules a schema cannot state: a cursor is an
    opaque token the API issued (random text is rightly a 400; the integration tests walk real
    cursors), and ``until`` must be later than ``since``."""
    query = case.query
    if query:
        query.pop("cursor", None)
        if "since" in query and "until" in query:
            query.pop("until")
    return case


def _token_unless_the_header_is_the_point(case: Any, headers: dict[str, str]) -> dict[str, str]:
    """The admin token, except for a case whose headers are the invalid part: negative mode
    drops or garbles Authorization there, and an injected token would turn it into a valid
    request (accepted, so "invalid data accepted"). Sent as generated, it must be a 401."""
    components = case.meta.components if case.meta is not None else {}
    header = components.get(ParameterLocation.HEADER)
    if header is not None and header.mode is GenerationMode.NEGATIVE:
        return {}
    return headers


@pytest.fixture
def fuzzed_api(db: TestDatabase, redis_client: redis.Redis) -> Iterator[Api]:
    store_messages(
        db.app_dsn, [message(ch, mid, mid) for ch in (CHANNEL_A, CHANNEL_B) for mid in range(1, 30)]
    )
    for mid in range(1, 10):
        insert_signal(db.app_dsn, CHANNEL_A, mid, "PETR4")
    with running_api(db.app_dsn, redis_client=redis_client, threads=4) as api:
        yield api


# Negative mode needs something to make invalid: operations with no parameters and no body
# (/health, /metrics, /openapi.json) are fuzzed with valid requests only.
FUZZ_CASES = [
    (operation["operationId"], mode)
    for item in document()["paths"].values()
    for operation in item.values()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE
    or operation.get("parameters")
    or operation.get("requestBody")
]


@pytest.mark.parametrize(("operation_id", "mode"), FUZZ_CASES)
def test_no_generated_request_breaks_the_api(
    fuzzed_api: Api, operation_id: str, mode: GenerationMode
) -> None:
    # (schemathesis.pytest.from_fixture does not run under pytest 9: hypothesis drives it here.)
    schema = schemathesis.openapi.from_url(f"{fuzzed_api.base_url}/openapi.json")
    operation = schema.find_operation_by_id(operation_id)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    strategy = operation.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        strategy = strategy.map(_within_cross_field_rules)

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        sent = _token_unless_the_header_is_the_point(case, headers)
        case.call_and_validate(base_url=fuzzed_api.base_url, headers=sent, timeout=30)

    check()
