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

The relay runs on pika's asynchronous ``SelectConnection``: a batch is sent
at once and its confirmations arrive together (one broker fsync for many
messages), about 10x the rate of pika's ``BlockingChannel``, which waits for
each message's confirmation before sending the next. Its connection shows as
``ams-store relay <name>`` in RabbitMQ's connection list.

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

    Declares ``exchange`` as a durable topic exchange, publishes ``batch``
    events at a time with publisher confirms (a batch is sent at once and its
    confirmations are awaited together), and advances the cursor (in the
    store) to the last event of the batch that the broker confirmed, with
    every event before it confirmed too. ``once=True`` publishes what is
    pending and returns. Otherwise it polls every ``interval`` seconds until
    ``should_stop()`` is true or Ctrl-C (``KeyboardInterrupt``); if the broker
    goes away it reconnects, waiting up to 30 s between attempts and logging
    a warning.

    Raises :class:`~ams.errors.BrokerError` (one line naming ``host:port``,
    never the password) when the broker cannot be reached at start, refuses
    the login, the virtual host, the exchange (e.g. one of another type by
    that name) or a message that is too large, or (``once=True``) goes away or
    nacks a message; :class:`~ams.errors.MissingDependencyError` without
    pika. Errors of ``source`` (the store) are raised as they are.
    """
    _check_arguments(amqp_url, exchange, relay, once, interval, batch, should_stop)
    pika = _import_pika()
    target = _Target(pika, amqp_url, exchange, relay)
    progress = _Progress(source, relay)
    stop: Callable[[], bool] = should_stop or (lambda: False)
    retry, ever_connected = interval, False
    try:
        while True:
            session = _Session(pika, target, progress, batch, once, interval, stop)
            try:
                session.run()
                return progress.published
            except _Unavailable as error:
                ever_connected = ever_connected or session.ready
                if once or not ever_connected:
                    raise BrokerError(str(error)) from None
                retry = interval if session.ready else retry
                retry = min(max(retry * 2, 1.0), MAX_RETRY_SECONDS)
                LOGGER.warning("relay %r: %s; retrying in %.0f s", relay, error, retry)
                if _wait(retry, stop):
                    return progress.published
    except KeyboardInterrupt:
        if once:
            raise
        LOGGER.info("relay %r interrupted after %d events", relay, progress.published)
        return progress.published


class _Unavailable(Exception):
    """The broker went away or is not there yet: worth trying again later."""


class _Target:
    """Where to publish: connection parameters, the exchange, and how to name failures."""

    def __init__(self, pika: Any, amqp_url: str, exchange: str, relay: str) -> None:
        self.pika = pika
        try:
            self.parameters = pika.URLParameters(amqp_url)
        except Exception as error:  # noqa: BLE001 - pika raises IndexError, ValueError, ...
            raise InvalidArgumentError(f"bad AMQP URL: {_first_line(error) or type(error).__name__}"
                                       f" (expected amqp://user:password@host:port/vhost)") from None
        # The name operators see in RabbitMQ's connection list.
        self.parameters.client_properties = {"connection_name": f"ams-store relay {relay}"}
        host, port = self.parameters.host, self.parameters.port
        self.where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.password = getattr(self.parameters.credentials, "password", None)
        self.exchange = exchange

    def failure(self, error: BaseException, doing: str = "") -> Exception:
        """A :class:`BrokerError` when retrying cannot help, else :class:`_Unavailable`; one line."""
        message = (f"RabbitMQ broker at {self.where} (virtual host "
                   f"{self.parameters.virtual_host!r}, exchange {self.exchange!r}): "
                   f"{doing}{self._reason(error)}")
        return BrokerError(message) if self._permanent(error) else _Unavailable(message)

    def _permanent(self, error: BaseException) -> bool:
        """A refused login, virtual host, exchange or message."""
        errors = self.pika.exceptions
        if isinstance(error, (errors.ProbableAuthenticationError, errors.AuthenticationError,
                              errors.ProbableAccessDeniedError)):
            return True
        return (isinstance(error, (errors.ChannelClosedByBroker, errors.ConnectionClosedByBroker))
                and error.reply_code in _PERMANENT_CODES)

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


class _Progress:
    """The relay's cursor in the store, and what it published; outlives reconnections."""

    def __init__(self, source: ChangeSource, relay: str) -> None:
        self.source, self.relay = source, relay
        self.cursor = 0
        self.published = 0

    def read(self, batch: int) -> list[dict[str, Any]]:
        self.cursor = self.source.relay_cursor(self.relay)
        return self.source.changes(after=self.cursor, limit=batch)

    def advance(self, last_id: int) -> None:
        if last_id > self.cursor:
            self.source.advance_relay(self.relay, last_id)
            self.cursor = last_id
            LOGGER.debug("relay %r: confirmed events up to %d", self.relay, last_id)


class _Session:
    """One connection on pika's asynchronous ioloop: declare, confirm, publish batch after batch.

    Every callback that reads or writes the store runs through :meth:`_guard`:
    an error stops the ioloop and :meth:`run` raises it.
    """

    def __init__(self, pika: Any, target: _Target, progress: _Progress, batch: int, once: bool,
                 interval: float, stop: Callable[[], bool]) -> None:
        self.pika, self.target, self.progress = pika, target, progress
        self.batch, self.once, self.interval, self.stop = batch, once, interval, stop
        self.properties = {"content_type": "application/json", "delivery_mode": 2}
        self.connection: Any = None
        self.channel: Any = None
        self.ready = False         # the exchange is declared and confirms are on
        self.closing = False       # we asked for the close
        self.failure: BaseException | None = None
        self.sent: list[tuple[int, int]] = []  # (delivery tag, event id) of the batch in flight
        self.unconfirmed: set[int] = set()
        self.refused: set[int] = set()         # nacked tags
        self.full = False                      # the batch in flight was a full one
        self.tag = 0

    def run(self) -> None:
        self.connection = self.pika.SelectConnection(
            self.target.parameters, on_open_callback=self._opened,
            on_open_error_callback=self._open_failed, on_close_callback=self._closed)
        try:
            self.connection.ioloop.start()
        except BaseException:  # Ctrl-C (or an error pika let through): keep what was confirmed
            self._guard(self._record)
            self._abandon()
            raise
        if self.failure is not None:
            raise self.failure

    # ------------------------------------------------------------------ connection and channel
    def _opened(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._channel_opened)

    def _open_failed(self, connection: Any, error: BaseException) -> None:
        self.failure = self.target.failure(error)
        connection.ioloop.stop()

    def _closed(self, connection: Any, reason: BaseException) -> None:
        if not self.closing and self.failure is None:
            self.failure = self.target.failure(reason, "lost the connection: ")
        self._guard(self._record)
        connection.ioloop.stop()

    def _channel_opened(self, channel: Any) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._channel_closed)
        channel.exchange_declare(self.target.exchange, exchange_type="topic", durable=True,
                                 callback=self._declared)

    def _channel_closed(self, _channel: Any, reason: BaseException) -> None:
        if not self.closing and self.failure is None:
            self.failure = self.target.failure(reason)
        self._close()

    def _declared(self, _frame: Any) -> None:
        self.channel.confirm_delivery(ack_nack_callback=self._confirmed, callback=self._confirming)

    def _confirming(self, _frame: Any) -> None:
        self.ready = True
        LOGGER.info("relay %r: publishing to exchange %r at %s", self.progress.relay,
                    self.target.exchange, self.target.where)
        self._guard(self._next_batch)

    def _close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.connection.is_open:
            self.connection.close()  # then _closed stops the ioloop
        elif not self.connection.is_closing:
            self.connection.ioloop.stop()

    def _abandon(self) -> None:
        """Close after an interruption, waiting at most 2 s for the broker."""
        connection = self.connection
        if connection is None or connection.is_closed:
            return
        self.closing = True
        try:
            if connection.is_open:
                connection.close()
            connection.ioloop.call_later(2.0, connection.ioloop.stop)
            connection.ioloop.start()
        except Exception:
            LOGGER.debug("closing the broker connection failed", exc_info=True)

    def _guard(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work``; on an error remember it and close (the first error wins)."""
        try:
            work(*args)
        except (self.pika.exceptions.AMQPError, OSError) as error:
            self.failure = self.failure or self.target.failure(error)
            self._close()
        except Exception as error:  # noqa: BLE001 - the store's error, raised by run()
            self.failure = self.failure or error
            self._close()

    # ------------------------------------------------------------------ publishing
    def _next_batch(self) -> None:
        if self.closing:
            return
        if self.stop():
            self._close()
            return
        events = self.progress.read(self.batch)
        if not events:
            self._idle()
            return
        self.full = len(events) == self.batch
        self.sent, self.unconfirmed, self.refused = [], set(), set()
        for event in events:
            properties = self.pika.BasicProperties(message_id=str(event["id"]), **self.properties)
            self.channel.basic_publish(self.target.exchange, routing_key(event),
                                       json.dumps(event, separators=(",", ":")).encode("utf-8"),
                                       properties)
            self.tag += 1
            self.sent.append((self.tag, event["id"]))
            self.unconfirmed.add(self.tag)

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        tags = ({tag for tag in self.unconfirmed if tag <= method.delivery_tag} if method.multiple
                else {method.delivery_tag} & self.unconfirmed)
        self.unconfirmed -= tags
        if isinstance(method, self.pika.spec.Basic.Nack):
            self.refused |= tags
        else:
            self.progress.published += len(tags)
        if self.unconfirmed:
            return
        self._guard(self._batch_done)

    def _batch_done(self) -> None:
        self._record()
        if self.refused:
            first = min(event_id for tag, event_id in self.sent if tag in self.refused)
            self.failure = _Unavailable(f"RabbitMQ broker at {self.target.where} did not accept "
                                        f"event {first} (nack)")
            self._close()
        elif self.full:
            self._next_batch()
        else:
            self._idle()

    def _record(self) -> None:
        """Advance the cursor over the confirmed events at the head of the batch in flight."""
        last = None
        for tag, event_id in self.sent:
            if tag in self.unconfirmed or tag in self.refused:
                break
            last = event_id
        if last is not None:
            self.progress.advance(last)

    def _idle(self) -> None:
        """Nothing (more) to send: done in once-mode, else look again after ``interval``."""
        if self.once:
            self._close()
            return
        deadline = time.monotonic() + self.interval
        self._wait_until(deadline)

    def _wait_until(self, deadline: float) -> None:
        if self.closing:
            return
        if self.stop():
            self._close()
            return
        left = deadline - time.monotonic()
        if left <= 0:
            self._next_batch()
            return
        self.connection.ioloop.call_later(min(left, 0.2),
                                          lambda: self._guard(self._wait_until, deadline))


def _wait(seconds: float, should_stop: Callable[[], bool]) -> bool:
    """Sleep ``seconds`` (no connection to serve); True when asked to stop."""
    deadline = time.monotonic() + seconds
    while not should_stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, 0.2))
    return True


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
