"""K4: a Hypothesis state machine drives the embedded system (database-level imports, updates
with and without ``If-Match``, deletes, and the same request sent twice) and compares it after
every step with a model small enough to be obviously right: name -> (desc, version).

Invariants after every step: the read model shows exactly the model's images with the model's
descriptions and versions (``ETag``); every task a command started has exactly one terminal
event. Hypothesis shrinks a failure to the shortest sequence of requests that shows it.

Not here: faults (consumer kill, broker bounce) and duplicate delivery at the broker, which the
embedded mode's in-process broker cannot be reached for; those are the fault suites' and
test_command_handling.py's (the inbox).
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import create_engine, func, select

from imagesvc.shared.db.models import StoredEvent
from tests.e2e.conftest import database_url
from tests.e2e.test_contention import final_code
from tests.support.origin import Origin
from tests.support.systems import start_embedded
from tests.support.tier import scaled

pytestmark = pytest.mark.e2e

#: Few names, so imports collide with existing images and deletes with missing ones often.
NAMES = ("alpha", "beta", "gamma")
DESCRIPTIONS = st.sampled_from(["", "one", "two", "three"])


@pytest.fixture(scope="module")
def model_system(tmp_path_factory):
    started = start_embedded(tmp_path_factory.mktemp("model"))
    origin = Origin()
    yield started, origin
    origin.close()
    started.stop()


def test_the_system_behaves_as_the_model(model_system):
    system, origin = model_system

    class ImagesAsAModel(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.prefix = "m" + uuid.uuid4().hex[:8] + "-"  # each run its own names in the shared system
            self.images: dict[str, tuple[str, int]] = {}
            self.tasks: list[str] = []
            self.client = system.client()

        def teardown(self):
            self.client.close()

        def send(self, method: str, name: str, **kwargs) -> int:
            response = self.client.request(method, f"/image/{self.prefix}{name}/", **kwargs)
            if "es_task_id" in response.headers:
                self.tasks.append(response.headers["es_task_id"])
            return final_code(self.client, response)

        @rule(name=st.sampled_from(NAMES), desc=DESCRIPTIONS, twice=st.booleans())
        def import_image(self, name, desc, twice):
            url, _ = origin.add_manifest(description=desc)
            codes = [self.send("POST", name, json={"manifest_url": url, "dc": "main", "desc": desc})
                     for _ in range(2 if twice else 1)]
            if name in self.images:
                assert codes == [406] * len(codes)
                return
            assert codes == [200] + [406] * (len(codes) - 1)  # the same import again finds it there
            self.images[name] = (desc, 1)

        @rule(name=st.sampled_from(NAMES), desc=DESCRIPTIONS, if_match=st.sampled_from(["none", "current", "stale"]))
        def update(self, name, desc, if_match):
            current = self.images.get(name)
            headers = {}
            if current is not None and if_match != "none":
                version = current[1] if if_match == "current" else current[1] - 1
                headers["If-Match"] = f'"v{version}"'
            code = self.send("PUT", name, json={"desc": desc}, headers=headers)
            if current is None:
                assert code == 404
            elif if_match == "stale":
                assert code == 412
            else:
                assert code == 200
                # An update that changes nothing writes no event, so the version stays.
                self.images[name] = (desc, current[1] + (desc != current[0]))

        @precondition(lambda self: bool(self.images))
        @rule(data=st.data(), current_tag=st.booleans())
        def delete(self, data, current_tag):
            name = data.draw(st.sampled_from(sorted(self.images)))
            headers = {"If-Match": f'"v{self.images[name][1]}"'} if current_tag else {}
            assert self.send("DELETE", name, headers=headers) == 200
            del self.images[name]

        @rule(name=st.sampled_from(NAMES))
        def delete_what_may_be_missing(self, name):
            assert self.send("DELETE", name) == (200 if name in self.images else 404)
            self.images.pop(name, None)

        @invariant()
        def read_model_equals_the_model(self):
            listed = self.client.get("/image/", params={"full": "true"})
            assert listed.status_code == 200
            seen = {image["name"].removeprefix(self.prefix): image["desc"]
                    for image in listed.json()["result"] if image["name"].startswith(self.prefix)}
            assert seen == {name: desc for name, (desc, _) in self.images.items()}
            for name, (_, version) in self.images.items():
                assert self.client.get(f"/image/{self.prefix}{name}/").headers["etag"] == f'"v{version}"'

        @invariant()
        def every_task_ended_once(self):
            if not self.tasks:
                return
            engine = create_engine(database_url(system))
            events = StoredEvent.__table__
            try:
                with engine.connect() as conn:
                    ended = dict(conn.execute(
                        select(events.c.correlation_id, func.count())
                        .where(events.c.correlation_id.in_(self.tasks),
                               events.c.type.in_(["task.succeeded", "task.failed"]))
                        .group_by(events.c.correlation_id)).all())
            finally:
                engine.dispose()
            assert ended == {task: 1 for task in self.tasks}

    ImagesAsAModel.TestCase.settings = settings(
        max_examples=scaled(ci=25, nightly=100), stateful_step_count=scaled(ci=12, nightly=30), deadline=None,
        database=None, suppress_health_check=list(HealthCheck))
    ImagesAsAModel.TestCase().runTest()
