"""The RabbitMQ relay (ams/events.py) against a real broker, fed by the SQL change feed.

RabbitMQ comes from ``AMS_TEST_AMQP_URL`` (default
``amqp://guest:guest@127.0.0.1:5672/%2F``). With no broker answering these
tests are skipped, unless ``AMS_REQUIRE_RABBITMQ=1`` (as in CI), where they
fail. Each test gets its own exchange and queue, deleted afterwards.
"""

from __future__ import annotations

import multiprocessing
import random
import socket
import sys
import time
from typing import Any

import pytest

from ams import events
from ams.errors import (
    BackendError,
    BrokerError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingDependencyError,
)

from broker import AMQP_URL, assert_messages_are
from feed_source import event, relay, writer

N_WRITERS, APPENDS_EACH, KILLS, BACKLOG = 4, 50, 5, 5000
DEADLINE = 240


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------ routing keys
def test_routing_key_has_four_words_and_reads_back():
    from urllib.parse import unquote
    change = event(application_name="v1.2", domain_name="50%.EOS", entry_type="models",
                   action="alias")
    key = events.routing_key(change)
    assert key == "v1%2E2.50%25%2EEOS.models.alias"
    assert [unquote(word) for word in key.split(".")] == ["v1.2", "50%.EOS", "models", "alias"]
    assert events.routing_key(event(domain_name="Équation")) == "app.Équation.candidates.add"


def test_a_long_routing_key_is_cut_to_255_bytes_and_stays_distinct():
    keys = set()
    for application, domain in [("a" * 255, "é" * 255), ("a" * 255, "é" * 254 + "x"),
                                ("app", "D" * 255), ("app", "D" * 254 + "E"), ("A" * 250, "EOS")]:
        key = events.routing_key(event(application_name=application, domain_name=domain,
                                       entry_type="candidates", action="repair"))
        assert len(key.encode()) <= 255 and key.count(".") == 3, key
        assert key.endswith(".candidates.repair")
        keys.add(key)
    assert len(keys) == 5
    assert events.routing_key(event(application_name="A" * 200, domain_name="EOS")) \
        == "A" * 200 + ".EOS.candidates.add"  # short enough: untouched


# ------------------------------------------------------------------ publishing
def test_once_publishes_every_pending_event_exactly(source, broker):
    source.append([
        event(files=["/data/a.h5", "/data/b.h5"], nbytes=300),
        event(domain_name="v2.EOS", action="move", version=4, files=["/data/c.h5"],
              to_entry_type="data", to_version=1),
        event(entry_type="models", action="alias", version=2, files=[], alias="prod", previous=None),
        event(action="remove", version=None, files=["/data/a.h5"]),
        event(application_name="other"),  # not ours: never published by our relay
    ])
    expected = source.changes()
    assert events.publish(source, AMQP_URL, exchange=broker.exchange, relay="r1", once=True) == 4
    assert_messages_are(broker.drain(), expected)
    assert source.relay_cursor("r1") == expected[-1]["id"]
    assert events.publish(source, AMQP_URL, exchange=broker.exchange, relay="r1", once=True) == 0
    assert broker.drain() == []
    more = source.append([event(action="repair", version=7, files=["/data/d.h5"])])
    assert events.publish(source, AMQP_URL, exchange=broker.exchange, relay="r1", once=True,
                          batch=1) == 1
    assert_messages_are(broker.drain(), source.changes(after=expected[-1]["id"]))
    assert source.relay_cursor("r1") == more[0]
    # Another relay name has its own cursor and starts from the beginning.
    assert events.publish(source, AMQP_URL, exchange=broker.exchange, relay="r2", once=True,
                          batch=2) == 5
    assert_messages_are(broker.drain(), source.changes())


def test_continuous_mode_polls_until_asked_to_stop(source, broker):
    ids = source.append([event(version=v) for v in range(1, 4)])
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        if calls["n"] == 3:  # new events while the relay sleeps
            source.append([event(version=9)])
        return source.relay_cursor("loop") > ids[-1]

    assert events.publish(source, AMQP_URL, exchange=broker.exchange, relay="loop",
                          interval=0.05, should_stop=should_stop) == 4
    assert_messages_are(broker.drain(), source.changes())


def test_continuous_mode_reconnects_when_the_connection_drops(source, broker, monkeypatch, caplog):
    ids = source.append([event(version=v) for v in range(1, 6)])
    sessions = []
    run = events._Session.run

    def recorded_run(self):
        sessions.append(self)
        return run(self)

    class DroppingSource:
        """Drops the broker connection right after the first batch was confirmed and recorded."""

        def changes(self, after, limit):
            return source.changes(after=after, limit=limit)

        def relay_cursor(self, relay):
            return source.relay_cursor(relay)

        def advance_relay(self, relay, last_id):
            source.advance_relay(relay, last_id)
            if len(sessions) == 1:
                sessions[0].connection.close()  # not asked for by the relay: a lost connection

    monkeypatch.setattr(events._Session, "run", recorded_run)
    with caplog.at_level("WARNING", logger="ams.events"):
        assert events.publish(DroppingSource(), AMQP_URL, exchange=broker.exchange, relay="drop",
                              interval=0.05, batch=2,
                              should_stop=lambda: source.relay_cursor("drop") == ids[-1]) == 5
    assert len(sessions) == 2
    assert "retrying in 1 s" in caplog.text
    assert_messages_are(broker.drain(), source.changes())  # each once


def test_killed_and_restarted_relay_loses_nothing(source, broker, feed_url):
    """A backlog, then 4 writers x 50 appends (some rolled back) while the relay is SIGKILLed 5 times."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["sqlalchemy", "pika", "ams.events", "ams.catalog.feed",
                                "feed_source"])
    rng = random.Random(15)
    backlog = len(source.append([event(version=v, files=[f"/data/backlog/{v}.h5"])
                                 for v in range(BACKLOG)]))

    def start():
        process = ctx.Process(target=relay, args=(feed_url, AMQP_URL, broker.exchange, "kill"))
        process.start()
        return process

    with ctx.Pool(N_WRITERS) as pool:
        jobs = [pool.apply_async(writer, (feed_url, index, APPENDS_EACH, 7, 0.05))
                for index in range(N_WRITERS)]
        running = start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 0.9))
            running.kill()  # SIGKILL: no cleanup, no cursor update
            running.join(DEADLINE)
            running = start()
        committed = backlog + sum(job.get(DEADLINE) for job in jobs)
    time.sleep(0.5)
    running.kill()
    running.join(DEADLINE)
    cursor_before_flush = source.relay_cursor("kill")
    flushed = events.publish(source, AMQP_URL, exchange=broker.exchange, relay="kill", once=True)

    expected = source.changes(limit=100_000)
    assert len(expected) == committed
    assert 0 < cursor_before_flush and flushed < committed  # the killed relays did publish
    received: dict[str, tuple[str, Any, bytes]] = {}
    messages = broker.drain()
    for message in messages:
        previous = received.setdefault(message[1].message_id, message)
        assert previous[2] == message[2]  # a resent event is the same message
    deduplicated = sorted(received.values(), key=lambda m: int(m[1].message_id))
    assert_messages_are(deduplicated, expected)
    duplicates = len(messages) - len(deduplicated)
    print(f"{committed} events, {len(messages)} messages, {duplicates} duplicates, "
          f"{flushed} flushed after the last kill")


# ------------------------------------------------------------------ failures
def test_a_broker_that_is_down_is_one_clear_error(source):
    port = unused_port()
    url = f"amqp://ams:s3cret-pw@127.0.0.1:{port}/%2F"
    with pytest.raises(BrokerError) as info:
        events.publish(source, url, once=True)
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "refused" in message.lower()
    assert "s3cret" not in message and "\n" not in message
    assert isinstance(info.value, BackendError) and isinstance(info.value, RuntimeError)
    with pytest.raises(BrokerError):  # the continuous mode gives up at start too
        events.publish(source, url, once=False, should_stop=lambda: True)
    assert source.relay_cursor("default") == 0


def test_a_refused_login_hides_the_password(source, broker):
    host = AMQP_URL.split("@", 1)[1]
    with pytest.raises(BrokerError) as info:
        events.publish(source, f"amqp://guest:n0t-the-pw@{host}", exchange=broker.exchange,
                       once=True)
    message = str(info.value)
    assert "refused the login" in message and "n0t-the-pw" not in message
    assert "\n" not in message


def test_an_exchange_of_another_type_is_refused_and_nothing_advances(source, broker):
    source.append([event()])
    broker.channel.exchange_declare(broker.exchange + ".direct", exchange_type="direct")
    try:
        with pytest.raises(BrokerError, match="PRECONDITION_FAILED"):
            events.publish(source, AMQP_URL, exchange=broker.exchange + ".direct", once=True)
    finally:
        broker.channel.exchange_delete(broker.exchange + ".direct")
    assert source.relay_cursor("default") == 0


def test_without_pika_the_error_says_what_to_install(source, monkeypatch):
    monkeypatch.setitem(sys.modules, "pika", None)  # "import pika" now raises ImportError
    with pytest.raises(MissingDependencyError) as info:
        events.publish(source, AMQP_URL, once=True)
    assert 'pip install "ams-store[rabbitmq]"' in str(info.value)
    assert isinstance(info.value, ImportError)
    assert events.routing_key(event()) == "app.EOS.candidates.add"  # pure: needs no pika


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"amqp_url": "http://h/"}, InvalidArgumentError, "amqp_url must look like amqp://"),
    ({"amqp_url": "guest:pw@h"}, InvalidArgumentError, "got no scheme"),
    ({"amqp_url": "amqp://u:pw@h:99999/"}, InvalidArgumentError, "bad AMQP URL: Port out of range"),
    ({"exchange": ""}, InvalidArgumentError, "exchange name must have 1 to 255 bytes"),
    ({"relay": ""}, InvalidArgumentError, "relay name must not be empty"),
    ({"batch": 0}, InvalidArgumentError, "batch must be between 1"),
    ({"interval": 0}, InvalidArgumentError, "interval must be a positive number"),
    ({"interval": "1"}, InvalidArgumentTypeError, "interval must be a number"),
    ({"once": 1}, InvalidArgumentTypeError, "once must be True or False"),
    ({"should_stop": True}, InvalidArgumentTypeError, "should_stop must be a callable"),
])
def test_publish_arguments_are_checked(kwargs, error, fragment):
    arguments = {"source": None, "amqp_url": AMQP_URL, **kwargs}
    with pytest.raises(error, match=fragment) as info:
        events.publish(**arguments)
    assert "pw" not in str(info.value)
