"""Property-based fuzzing of the whole API against its own OpenAPI document.

The document at ``/api/v1/openapi.json`` is the contract (design principle 3):
schemathesis generates valid and invalid requests for every operation from it, sends
them to the app in-process as an organisation admin, and checks that no response is
a 5xx or contradicts the document (an undocumented status code, content type or body).

The budget is fixed and deterministic (a few examples per operation and generation
mode, derandomized, no shrinking, no example database), so a failure reproduces and
the test stays fast. It runs on SQLite only: the contract does not depend on the
database, and the regular tests cover PostgreSQL.

All operations are fuzzed in one test, and every distinct failure is reported in one
assertion message: schemathesis's own per-operation pytest integration
(``schemathesis.pytest.from_fixture``, needed because ``app`` is a fixture) does not
run under pytest 9.2 (it sets ``Node._nodeid``, which pytest no longer has).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.errors import FailureGroup
from schemathesis.python.asgi import shutdown_lifespans
from sqlalchemy import select

from maestro.app import OPENAPI_URL
from maestro.config import Settings
from maestro.identity.models import ApiKey
from tests.factories import Factory, Org

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=20,  # per operation and generation mode
    derandomize=True,
    database=None,
    deadline=None,
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    suppress_health_check=list(hypothesis.HealthCheck),
    print_blob=False,
)

Findings = dict[tuple[str, str, str], str]


@pytest.fixture
def api_schema(app: FastAPI, settings: Settings) -> Iterator[schemathesis.BaseSchema]:
    if not settings.uses_embedded_database:
        pytest.skip("the API contract does not depend on the database; fuzzed on SQLite only")
    schema = schemathesis.openapi.from_asgi(OPENAPI_URL, app)
    yield schema
    # Loading the schema started the app's lifespan in schemathesis's event-loop thread.
    shutdown_lifespans()


@dataclass
class Targets:
    """What valid requests act on: a fresh organisation for each operation and mode, so
    that one operation's side effects (logging out, deleting the organisation) cannot
    starve the others."""

    headers: dict[str, str]
    path_parameters: dict[str, str]


def make_targets(factory: Factory) -> Targets:
    org = Org.new(factory)
    member = org.user("developer")
    project = org.project("private", members={"viewer": member})
    org.api_key({"projects": ["read"]})
    with factory.database.session() as session:
        key_id = session.scalars(select(ApiKey.id).where(ApiKey.organization_id == org.id)).one()
    return Targets(
        headers=org.admin.headers,
        path_parameters={
            "org_id": org.id,
            "user_id": member.user_id,
            "project_id": project,
            "key_id": key_id,
        },
    )


def fuzz(
    operation: schemathesis.APIOperation,
    mode: schemathesis.GenerationMode,
    world: Targets,
    findings: Findings,
) -> None:
    """Record every distinct failure instead of stopping at the first one."""
    positive = mode is schemathesis.GenerationMode.POSITIVE
    # Valid requests reach this world's real resources (instead of answering 404 at
    # once); invalid ones are generated everywhere, path parameters included.
    known = {name: value for name, value in world.path_parameters.items() if f"{{{name}}}" in operation.path}
    strategy = operation.as_strategy(mode, headers=world.headers, path_parameters=known if positive else None)

    @FUZZ_SETTINGS
    @hypothesis.given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        response = case.call()
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = (operation.label, str(response.status_code), failure.title)
                findings.setdefault(key, f"[{mode.value} data] {group.message}")

    try:
        run()
    except Unsatisfiable:
        if positive:
            raise
        # Nothing to make invalid: no parameters and no body.


def test_every_response_honours_the_openapi_document(
    api_schema: schemathesis.BaseSchema, factory: Factory
) -> None:
    findings: Findings = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:
            fuzz(operation, mode, make_targets(factory), findings)
    assert not findings, f"{len(findings)} distinct failures:\n\n" + "\n".join(
        f"{' | '.join(key)}\n{message}" for key, message in sorted(findings.items())
    )
