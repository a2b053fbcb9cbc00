"""F1: schemathesis against the gateway's own OpenAPI description, over HTTP, on a live embedded
system (the same gateway, consumers and projector users run; database-level operations).

Every operation gets ``EXAMPLES`` generated requests, valid and invalid ones (50 in CI, 500 with
``IMAGESVC_TIER=nightly``), all with a valid ``ES-API-KEY``; ``ignored_auth`` re-sends them
without and with a wrong key. A failure is either a product bug (a 500, or bad input not refused
with a 4xx) or a wrong description (a code, content type or body the description does not
declare): fix the product or ``services/gateway/openapi.py``, never this test.

The key belongs to a SuperAdmin made for this module only, so that a generated request that
replaces some user's key (``PUT /api/accounts/user/<name>/apikeys/``) cannot lock the run out.
"""

from __future__ import annotations

import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from imagesvc.services.gateway import openapi
from tests.support.systems import start_embedded
from tests.support.tier import scaled

pytestmark = pytest.mark.e2e

EXAMPLES = scaled(ci=50, nightly=500)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection, ignored_auth]


@pytest.fixture(scope="module")
def fuzzed_system(tmp_path_factory):
    started = start_embedded(tmp_path_factory.mktemp("fuzz"))
    username = "fuzz-" + uuid.uuid4().hex[:12]
    started.api_key = started.admin("create-superadmin", username).strip().splitlines()[-1]
    yield started
    started.stop()


# The description is loaded from the module that the gateway serves at /api/openapi.json (checked
# equal below), so operations are known at collection time and each is its own test.
DESCRIPTION = schemathesis.openapi.from_dict(openapi.document())
OPERATIONS = [result.ok() for result in DESCRIPTION.get_all_operations()]
# The original API refuses some invalid requests with codes outside schemathesis' default list:
# 412 for a bad ``order_by`` (reference §5, checked before anything else) and 413 for a body over
# the size limit. Both are refusals; anything 2xx or 5xx still fails the check.
_rejection = DESCRIPTION.config.checks.negative_data_rejection
_rejection.expected_statuses = [*_rejection.expected_statuses, "412", "413"]
# Unknown query parameters are ignored, as the original (Django REST framework) ignores them; a
# request is "invalid" only through the parameters and bodies the description declares.
DESCRIPTION.config.generation.update(allow_extra_parameters=False)
# A header value with a control character is refused by the HTTP server (uvicorn) with its own
# plain-text 400 before any application code runs: a refusal, but not the API's to describe.
# Generation avoids them where it can, and ``conforms`` drops the cases that still carry one.
CONTROL_CHARACTERS = frozenset(map(chr, [*range(32), 127]))
DESCRIPTION.config.generation.update(exclude_header_characters="".join(sorted(CONTROL_CHARACTERS)))


def test_the_served_description_is_the_one_fuzzed(fuzzed_system):
    with fuzzed_system.client() as client:
        assert client.get("/openapi.json").json() == openapi.document()


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_every_operation_conforms_to_its_description(operation, fuzzed_system):
    origin = fuzzed_system.url.removesuffix("/api")
    headers = {"ES-API-KEY": fuzzed_system.api_key}
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    # schemathesis' own pytest plugin does not run under pytest 9: Hypothesis drives it directly.
    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink])
    def conforms(case) -> None:
        assume(not any(CONTROL_CHARACTERS.intersection(str(value)) for value in (case.headers or {}).values()))
        case.call_and_validate(base_url=origin, headers=headers, checks=CHECKS, timeout=30)

    conforms()
