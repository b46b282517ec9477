"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis), against `python -m app`.

Valid and invalid bodies, headers and methods: no 5xx, every status documented, every body
matching its schema, and bodies that break the schema refused with a 4xx. Bounded in
examples per operation so CI stays quick; the seed varies, so each run explores anew.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from server import ServerProcess

pytestmark = pytest.mark.slow  # processes, exports or benchmarks: the full run (CI), not the fast tier

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 150  # per operation and mode


@pytest.fixture(scope="module")
def server(exported_classifier, exported_mlm):
    flags = ["--classify-model", str(exported_classifier), "--fill-mask-model", str(exported_mlm), "--max-wait-ms", "1"]
    with ServerProcess(*flags) as process:
        yield process


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda mode: mode.value)
def test_no_server_errors_and_every_response_matches_the_schema(server, mode):
    # Driven by hand rather than through schemathesis' pytest plugin, whose lazy schemas do not run on pytest 9.
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /classify", "POST /fill-mask", "GET /readyz", "GET /metrics"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not len(operation.body):
            continue  # a GET without parameters has nothing to get wrong

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def exercise(case):
            case.call_and_validate(checks=checks, timeout=30)

        exercise()
