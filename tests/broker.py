"""A real RabbitMQ broker for the relay tests: a fresh exchange and queue per test.

RabbitMQ comes from ``AMS_TEST_AMQP_URL`` (default
``amqp://guest:guest@127.0.0.1:5672/%2F``). With no broker answering, the tests
that use it are skipped, unless ``AMS_REQUIRE_RABBITMQ=1`` (as in CI), where they fail.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest

from ams import events

AMQP_URL = os.environ.get("AMS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
START_HINT = "start one with: rabbitmq-server -detached (or set AMS_TEST_AMQP_URL)"
_BROKER: dict[str, Any] = {}


def require_rabbitmq() -> None:
    if "ok" not in _BROKER:
        try:
            import pika
            pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
            _BROKER["ok"] = True
        except Exception as error:  # noqa: BLE001 - any failure means "no broker"
            _BROKER["ok"], _BROKER["why"] = False, repr(error)
    if _BROKER["ok"]:
        return
    message = f"no RabbitMQ broker answers at {AMQP_URL.split('@')[-1]} ({_BROKER['why']}); {START_HINT}"
    if os.environ.get("AMS_REQUIRE_RABBITMQ") == "1":
        pytest.fail(message)
    pytest.skip(message)


class Broker:
    """A fresh exchange with one durable queue bound to every key; drained by :meth:`drain`."""

    def __init__(self) -> None:
        import pika
        self.exchange = f"ams.test.{uuid.uuid4().hex[:12]}"
        self.queue = f"{self.exchange}.all"
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        self.channel.queue_declare(self.queue, durable=True)
        self.channel.queue_bind(self.queue, self.exchange, routing_key="#")

    def drain(self) -> list[tuple[str, Any, bytes]]:
        """Every message in the queue now: (routing key, properties, body), in queue order."""
        messages = []
        for method, properties, body in self.channel.consume(self.queue, auto_ack=True,
                                                             inactivity_timeout=0.5):
            if method is None:  # nothing came for 0.5 s: the queue is empty
                break
            messages.append((method.routing_key, properties, body))
        self.channel.cancel()
        return messages

    def close(self) -> None:
        self.channel.queue_delete(self.queue)
        self.channel.exchange_delete(self.exchange)
        self.connection.close()


def assert_messages_are(messages, expected: list[dict[str, Any]]) -> None:
    """Each message is its event: body, id, properties and routing key."""
    assert [json.loads(body) for _key, _properties, body in messages] == expected
    for (key, properties, _body), change in zip(messages, expected):
        assert key == events.routing_key(change)
        assert properties.message_id == str(change["id"])
        assert properties.content_type == "application/json"
        assert properties.delivery_mode == 2


