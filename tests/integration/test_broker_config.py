"""The RabbitMQ configuration docs/security.md asks for, as written, on a private node: the
broker itself refuses a message over ``max_message_size``."""

from __future__ import annotations

import re
from pathlib import Path

import pika
import pytest

from tests.support.private_broker import PrivateBroker, available
from tests.support.services import unavailable
from tests.support.tap import publish

pytestmark = pytest.mark.rabbitmq

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def documented_config() -> str:
    block = re.search(r"<!-- rabbitmq-conf -->\s*```ini\n(.*?)```", DOCS.read_text(), re.S)
    assert block, "docs/security.md has no rabbitmq-conf block"
    return "\n".join(line.strip() for line in block.group(1).splitlines()) + "\n"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    why = available()
    if why:
        unavailable("a private RabbitMQ node", why)
    broker = PrivateBroker(tmp_path_factory.mktemp("rabbitmq-conf"), extra_config=documented_config())
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


def test_the_documented_max_message_size_is_enforced_by_the_broker(node):
    limit = int(re.search(r"max_message_size = (\d+)", documented_config()).group(1))
    with pika.BlockingConnection(pika.URLParameters(node.url.rstrip("/") + "/%2F")) as conn:
        conn.channel().queue_declare("sized", durable=True)
    publish(node.url, "", "sized", b"x" * (limit - 4096))
    with pytest.raises(pika.exceptions.AMQPError):
        publish(node.url, "", "sized", b"x" * (limit + 1))
