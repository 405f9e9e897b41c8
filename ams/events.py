"""Relay the store's change feed to RabbitMQ, at least once: never lose an event.

:func:`publish` reads the events after its relay's cursor (kept in the
store's database, per relay name), publishes each to a durable topic exchange
as a persistent JSON message, waits for the broker's confirmation, and only
then advances the cursor. Killed at any moment and restarted, it resumes from
the cursor: no event is lost, and only events sent since the last cursor
update (at most one ``batch``) may be sent twice, so consumers deduplicate by
``message_id`` (the event id).

>>> import ams.events                                  # doctest: +SKIP
>>> with AMSDataStore("app", url) as store:            # doctest: +SKIP
...     ams.events.publish(store, "amqp://guest:guest@127.0.0.1:5672/%2F", once=True)
12

Messages: body = the event as JSON (exactly what ``store.changes()``
returns), ``content_type="application/json"``, ``delivery_mode=2``
(persistent), ``message_id=str(event["id"])``, routing key
``<application>.<domain>.<entry_type>.<action>`` (see :func:`routing_key`).
The exchange routes to whatever queues are bound to it; RabbitMQ drops a
message no queue is bound for, so declare and bind durable queues before
relaying (the events stay in the store: a consumer can catch up with
``store.changes()``).

``pika`` is an optional dependency: ``pip install "ams-store[rabbitmq]"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any, Protocol

from . import _validate
from .errors import (
    BrokerError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingDependencyError,
)
from .url import mask_password

__all__ = ["DEFAULT_EXCHANGE", "INSTALL_HINT", "ChangeSource", "publish", "routing_key"]

LOGGER = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "ams.store"
INSTALL_HINT = 'pip install "ams-store[rabbitmq]"'
#: AMQP 0-9-1 routing keys and exchange names are "short strings": at most 255 bytes.
MAX_SHORT_STRING = 255
MAX_BATCH = _validate.MAX_CHANGES_LIMIT
#: Longest pause between two attempts to reach a broker that went away.
MAX_RETRY_SECONDS = 30.0
# Broker reply codes that say "this will not work next time either" (AMQP 0-9-1).
_PERMANENT_CODES = frozenset({403, 406, 530})


class ChangeSource(Protocol):
    """What :func:`publish` needs of a store (``AMSDataStore`` provides it)."""

    def changes(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Events with ``id > after``, in id order."""

    def relay_cursor(self, relay: str) -> int:
        """The id of the last event relay ``relay`` had confirmed (0 when new)."""

    def advance_relay(self, relay: str, last_id: int) -> None:
        """Record that relay ``relay`` had every event up to ``last_id`` confirmed."""


# --------------------------------------------------------------------------- routing
def routing_key(event: Mapping[str, Any]) -> str:
    """``<application>.<domain>.<entry_type>.<action>``: always four dot-separated words.

    A ``.`` inside a name is written ``%2E`` and a ``%`` is written ``%25``, so
    the key splits back into the exact names with ``urllib.parse.unquote``. A
    key that would exceed AMQP's 255 bytes keeps a prefix of its longest
    name(s) followed by ``~`` and 8 hex digits of the name's SHA-256; the
    message body always carries the exact names. Bind queues with topic
    patterns such as ``myapp.EOS.candidates.*`` or ``myapp.*.models.#``.

    >>> routing_key({"application_name": "app", "domain_name": "EOS",
    ...              "entry_type": "candidates", "action": "add"})
    'app.EOS.candidates.add'
    >>> routing_key({"application_name": "v1.2", "domain_name": "100%",
    ...              "entry_type": "data", "action": "move"})
    'v1%2E2.100%25.data.move'
    """
    words = [_escape(str(event[key]))
             for key in ("application_name", "domain_name", "entry_type", "action")]
    room = MAX_SHORT_STRING - 3 - _size(words[2]) - _size(words[3])
    application, domain = words[0], words[1]
    if _size(application) + _size(domain) > room:
        if _size(application) <= room // 2:
            domain = _shorten(domain, room - _size(application))
        elif _size(domain) <= room // 2:
            application = _shorten(application, room - _size(domain))
        else:
            application = _shorten(application, room // 2)
            domain = _shorten(domain, room - _size(application))
    return ".".join((application, domain, words[2], words[3]))


def _escape(name: str) -> str:
    return name.replace("%", "%25").replace(".", "%2E")


def _size(word: str) -> int:
    return len(word.encode("utf-8", "surrogatepass"))


def _shorten(word: str, limit: int) -> str:
    """``word`` cut to at most ``limit`` UTF-8 bytes, ending in ``~`` and a hash of the whole."""
    if _size(word) <= limit:
        return word
    digest = "~" + hashlib.sha256(word.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    prefix = word.encode("utf-8", "surrogatepass")[:limit - len(digest)]
    return prefix.decode("utf-8", "ignore") + digest


# --------------------------------------------------------------------------- publishing
def publish(source: ChangeSource, amqp_url: str, exchange: str = DEFAULT_EXCHANGE,
            relay: str = "default", once: bool = False, interval: float = 1.0,
            batch: int = 500, should_stop: Callable[[], bool] | None = None) -> int:
    """Publish the events after relay ``relay``'s cursor to ``exchange``; return how many.

    Declares ``exchange`` as a durable topic exchange and publishes with
    publisher confirms, ``batch`` events at a time; the cursor advances (in
    the store) only to the last event the broker confirmed. ``once=True``
    publishes what is pending and returns. Otherwise it polls every
    ``interval`` seconds until ``should_stop()`` is true or Ctrl-C
    (``KeyboardInterrupt``), and if the broker goes away it keeps retrying,
    up to every 30 s, logging a warning.

    Raises :class:`~ams.errors.BrokerError` (one line naming ``host:port``,
    never the password) when the broker cannot be reached at start, refuses
    the login, the exchange (e.g. one of another type by that name) or a
    message; :class:`~ams.errors.MissingDependencyError` without pika.
    """
    _check_arguments(amqp_url, exchange, relay, once, interval, batch, should_stop)
    pika = _import_pika()
    broker = _Broker(pika, amqp_url, exchange)
    stop: Callable[[], bool] = should_stop or (lambda: False)
    relayed = _Relay(source, broker, relay, batch)
    retry = interval
    try:
        try:
            broker.connect()
        except _Unavailable as error:
            raise BrokerError(str(error)) from None
        while True:
            try:
                if not broker.is_open:
                    broker.connect()
                relayed.publish_pending()
                if once:
                    return relayed.published
                retry = interval
                if broker.sleep(interval, stop):
                    return relayed.published
            except _Unavailable as error:
                if once:
                    raise BrokerError(str(error)) from None
                broker.close()
                retry = min(max(retry * 2, 1.0), MAX_RETRY_SECONDS)
                LOGGER.warning("relay %r: %s; retrying in %.0f s", relay, error, retry)
                if broker.sleep(retry, stop):
                    return relayed.published
    except KeyboardInterrupt:
        if once:
            raise
        LOGGER.info("relay %r interrupted after %d events", relay, relayed.published)
        return relayed.published
    finally:
        broker.close()


class _Relay:
    """Moves events from a source to a broker, advancing the cursor behind the confirmations."""

    def __init__(self, source: ChangeSource, broker: _Broker, relay: str, batch: int) -> None:
        self.source, self.broker, self.relay, self.batch = source, broker, relay, batch
        self.published = 0

    def publish_pending(self) -> None:
        """Publish batches until none is left; the cursor moves after each batch."""
        while True:
            cursor = self.source.relay_cursor(self.relay)
            events = self.source.changes(after=cursor, limit=self.batch)
            if not events:
                return
            confirmed = cursor
            try:
                for event in events:
                    self.broker.send(event)  # returns once the broker confirmed it
                    confirmed = event["id"]
                    self.published += 1
            finally:  # also on a broker failure or Ctrl-C: keep what was confirmed
                if confirmed > cursor:
                    self.source.advance_relay(self.relay, confirmed)
                    LOGGER.debug("relay %r: confirmed events up to %d", self.relay, confirmed)
            if len(events) < self.batch:
                return


class _Unavailable(Exception):
    """The broker went away or is not there yet: worth trying again later."""


class _Broker:
    """One blocking pika connection with a confirming channel on the declared exchange."""

    def __init__(self, pika: Any, amqp_url: str, exchange: str) -> None:
        self.pika = pika
        try:
            self.parameters = pika.URLParameters(amqp_url)
        except Exception as error:  # noqa: BLE001 - pika raises IndexError, ValueError, ...
            raise InvalidArgumentError(f"bad AMQP URL: {_first_line(error) or type(error).__name__}"
                                       f" (expected amqp://user:password@host:port/vhost)") from None
        host = self.parameters.host
        self.where = f"[{host}]:{self.parameters.port}" if ":" in host else f"{host}:{self.parameters.port}"
        self.password = getattr(self.parameters.credentials, "password", None)
        self.exchange = exchange
        self.connection: Any = None
        self.channel: Any = None
        self.properties = {"content_type": "application/json", "delivery_mode": 2}

    @property
    def is_open(self) -> bool:
        return self.channel is not None and self.channel.is_open

    def connect(self) -> None:
        """Connect, declare the exchange, turn on confirms; :class:`_Unavailable` or BrokerError."""
        errors = self.pika.exceptions
        self.close()
        try:
            self.connection = self.pika.BlockingConnection(self.parameters)
            channel = self.connection.channel()
            channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
            channel.confirm_delivery()
            self.channel = channel
        except (errors.AMQPError, OSError) as error:
            self.close()
            message = (f"RabbitMQ broker at {self.where} (virtual host "
                       f"{self.parameters.virtual_host!r}, exchange {self.exchange!r}): "
                       f"{self._reason(error)}")
            if self._permanent(error):
                raise BrokerError(message) from None
            raise _Unavailable(message) from None
        LOGGER.info("relaying to exchange %r at %s", self.exchange, self.where)

    def send(self, event: Mapping[str, Any]) -> None:
        """Publish one event and wait for the broker's confirmation."""
        errors = self.pika.exceptions
        body = json.dumps(event, separators=(",", ":")).encode("utf-8")
        properties = self.pika.BasicProperties(message_id=str(event["id"]), **self.properties)
        try:
            self.channel.basic_publish(self.exchange, routing_key(event), body, properties)
        except errors.NackError:
            raise _Unavailable(f"RabbitMQ broker at {self.where} did not accept event "
                               f"{event['id']} (nack)") from None
        except (errors.AMQPError, OSError) as error:
            message = (f"RabbitMQ broker at {self.where} failed while publishing event "
                       f"{event['id']} to exchange {self.exchange!r}: {self._reason(error)}")
            if self._permanent(error):
                raise BrokerError(message) from None
            raise _Unavailable(message) from None

    def sleep(self, seconds: float, should_stop: Callable[[], bool]) -> bool:
        """Wait ``seconds`` (serving the connection's heartbeats); True when asked to stop."""
        deadline = time.monotonic() + seconds
        while not should_stop():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            step = min(left, 0.2)
            if self.connection is not None and self.connection.is_open:
                try:
                    self.connection.sleep(step)
                except (self.pika.exceptions.AMQPError, OSError) as error:
                    self.close()
                    raise _Unavailable(f"RabbitMQ broker at {self.where}: "
                                       f"{self._reason(error)}") from None
            else:
                time.sleep(step)
        return True

    def close(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:
                LOGGER.debug("closing the broker connection failed", exc_info=True)

    def _permanent(self, error: BaseException) -> bool:
        """Whether retrying cannot help: a refused login, vhost, exchange or message."""
        errors = self.pika.exceptions
        if isinstance(error, (errors.ProbableAuthenticationError, errors.AuthenticationError,
                              errors.ProbableAccessDeniedError)):
            return True
        code = getattr(error, "reply_code", None)
        return isinstance(error, (errors.ChannelClosedByBroker, errors.ConnectionClosedByBroker)) \
            and code in _PERMANENT_CODES

    def _reason(self, error: BaseException) -> str:
        errors = self.pika.exceptions
        if isinstance(error, (errors.ProbableAuthenticationError, errors.AuthenticationError)):
            reason = "the broker refused the login (check the user name and password)"
        elif isinstance(error, (errors.ChannelClosedByBroker, errors.ConnectionClosedByBroker)):
            reason = f"({error.reply_code}) {error.reply_text}"
        else:
            cause = _cause(error)
            reason = (cause.strerror if isinstance(cause, OSError) and cause.strerror else
                      _first_line(cause) or _first_line(repr(cause)) or type(cause).__name__)
            if "refused" in reason.lower():
                reason += " (is RabbitMQ running there?)"
        return mask_password(reason, self.password)


def _cause(error: BaseException) -> BaseException:
    """The innermost error pika wrapped (e.g. the ``ConnectionRefusedError`` of a connect)."""
    for _ in range(10):
        inner = getattr(error, "exception", None)
        if not isinstance(inner, BaseException) and len(error.args) == 1:
            inner = error.args[0]
        if not isinstance(inner, BaseException):
            break
        error = inner
    return error


def _first_line(value: Any) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else ""


def _import_pika() -> Any:
    try:
        import pika  # type: ignore[import-untyped]
    except ImportError as error:
        raise MissingDependencyError(f"publishing to RabbitMQ needs pika ({error}); install it "
                                     f"with: {INSTALL_HINT}") from None
    return pika


def _check_arguments(amqp_url: Any, exchange: Any, relay: Any, once: Any, interval: Any,
                     batch: Any, should_stop: Any) -> None:
    if not isinstance(amqp_url, str):
        raise InvalidArgumentTypeError(f"amqp_url must be a str, not {type(amqp_url).__name__}")
    scheme = amqp_url.split("://", 1)[0].lower() if "://" in amqp_url else ""
    if scheme not in ("amqp", "amqps"):
        got = f"scheme {scheme!r}" if scheme else "no scheme"
        raise InvalidArgumentError("amqp_url must look like amqp://user:password@host:port/vhost "
                                   f"(or amqps://...); got {got}")
    if not isinstance(exchange, str):
        raise InvalidArgumentTypeError(f"exchange must be a str, not {type(exchange).__name__}")
    if not exchange or len(exchange.encode("utf-8", "surrogatepass")) > MAX_SHORT_STRING:
        raise InvalidArgumentError(f"exchange name must have 1 to {MAX_SHORT_STRING} bytes: "
                                   f"{exchange[:80]!r}")
    _validate.name(relay, "relay name")
    _validate.boolean(once, "once")
    if isinstance(interval, bool) or not isinstance(interval, Real):
        raise InvalidArgumentTypeError(f"interval must be a number of seconds, not "
                                       f"{type(interval).__name__}")
    if not (math.isfinite(float(interval)) and float(interval) > 0):
        raise InvalidArgumentError(f"interval must be a positive number of seconds, not {interval}")
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise InvalidArgumentTypeError(f"batch must be an int, not {type(batch).__name__}")
    if not 1 <= batch <= MAX_BATCH:
        raise InvalidArgumentError(f"batch must be between 1 and {MAX_BATCH}, not {batch}")
    if should_stop is not None and not callable(should_stop):
        raise InvalidArgumentTypeError("should_stop must be a callable returning True to stop")
