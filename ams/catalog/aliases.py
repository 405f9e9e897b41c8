"""Deployment aliases: named pointers to a version of an entry, with their full history, in a table of ams's own beside Kosh's.

An alias (``champion``, ``prod``) belongs to one application, domain and entry
type and points at one version of that entry. Nothing is ever updated in place:
every change (set, move, removal) appends one row to ``ams_alias_history``, so
the current value is the alias's newest row and the value at any past moment is
the newest row stamped at or before it. Kosh and Sina never read this table;
the layout plain Kosh sees is unchanged.

Every function takes a SQLAlchemy :class:`~sqlalchemy.engine.Connection` that
is already inside a transaction and never commits. For writes the caller holds
the store's write lock (``BEGIN IMMEDIATE`` on SQLite, a ``SELECT ... FOR
UPDATE`` on MariaDB), which makes "read the newest row, append the next one"
atomic. Whether a version exists is the caller's business (it lives in Kosh's
records); this module checks alias names, versions and times.

Times are stored as fixed-width ISO-8601 UTC strings with microseconds
(``2024-05-01T14:00:00.000000+00:00``): readable in a SQL shell, exact, and
sorting as text in time order, so ``get_alias(at=...)`` is two index seeks
whatever the length of the history.
Within one alias the stamps never go backwards: a change stamped earlier than
the alias's previous change (clock skew between nodes) is stamped with the
previous change's time instead, so history order and time order agree.

>>> check_alias_name("champion")
'champion'
>>> parse_selector("@champion"), parse_selector("latest"), parse_selector(3)
('champion', None, None)
"""

from __future__ import annotations

import getpass
import logging
import os
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateIndex, CreateTable

# Absolute imports: they keep working while ams/catalog is still a namespace directory.
from ams import _validate
from ams._validate import _short
from ams.catalog.schema import MARIADB_COLLATION
from ams.errors import InvalidArgumentError, InvalidArgumentTypeError, NotFoundError

__all__ = [
    "MAX_ALIAS_LENGTH", "RESERVED_NAMES", "SELECTOR_PREFIX", "TABLE_NAME", "TimeLike",
    "check_alias_name", "create_tables", "current", "default_user", "forget", "get_alias",
    "history", "parse_selector", "pointing_at", "remove_alias", "set_alias",
]

log = logging.getLogger(__name__)

TABLE_NAME = "ams_alias_history"
MAX_ALIAS_LENGTH = 64
#: Names an alias may not take, compared case-insensitively ("latest" is computed).
RESERVED_NAMES = frozenset({"latest"})
#: ``"@champion"`` selects the version the alias ``champion`` points at.
SELECTOR_PREFIX = "@"
_ALIAS_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
#: A moment: an aware datetime, a naive datetime meaning UTC, or an ISO-8601 string.
TimeLike: TypeAlias = datetime | str

METADATA = sa.MetaData()
# With utf8mb4 a character takes up to 4 bytes: the widest index below is
# (255 + 255 + 32 + 64 + 32) x 4 + 8 = 2,560 bytes, under InnoDB's 3,072.
_TABLE = sa.Table(
    TABLE_NAME,
    METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("application_name", sa.String(255), nullable=False),
    sa.Column("domain_name", sa.String(255), nullable=False),
    sa.Column("entry_type", sa.String(32), nullable=False),
    sa.Column("alias", sa.String(MAX_ALIAS_LENGTH), nullable=False),
    sa.Column("version", sa.Integer(), nullable=True),   # NULL: the alias was removed
    sa.Column("previous", sa.Integer(), nullable=True),  # NULL: it was unset before
    sa.Column("set_at", sa.String(32), nullable=False),  # ISO-8601 UTC, microseconds
    sa.Column("set_by", sa.String(255), nullable=False),
    # History and the newest row of an alias (current value, the write path).
    sa.Index("ams_alias_history_key_id", "application_name", "domain_name", "entry_type",
             "alias", "id"),
    # The value at a moment: the newest row stamped at or before it.
    sa.Index("ams_alias_history_key_set_at", "application_name", "domain_name", "entry_type",
             "alias", "set_at", "id"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate=MARIADB_COLLATION,
)


# ------------------------------------------------------------------ schema
def create_tables(conn: Connection) -> list[str]:
    """Create the alias table and its indexes where missing; return the names created.

    Idempotent, and safe against a concurrent creator (``IF NOT EXISTS``). On
    MariaDB a ``CREATE`` commits the surrounding transaction implicitly, so call
    this in a transaction of its own, as the store does when it opens.
    """
    inspector = sa.inspect(conn)
    steps: list[tuple[str, Any]] = []
    if not inspector.has_table(TABLE_NAME):
        steps.append((TABLE_NAME, CreateTable(_TABLE, if_not_exists=True)))
        existing = set()
    else:
        existing = {index["name"] for index in inspector.get_indexes(TABLE_NAME)}
    for index in sorted(_TABLE.indexes, key=lambda item: str(item.name)):
        if index.name not in existing:
            steps.append((str(index.name), CreateIndex(index, if_not_exists=True)))
    for _name, ddl in steps:
        conn.execute(ddl)
    created = [name for name, _ddl in steps]
    if created:
        log.info("created %s", ", ".join(created))
    return created


# ------------------------------------------------------------------ pure helpers
def check_alias_name(name: Any) -> str:
    """``name`` if it can name an alias, else an error naming it.

    1 to 64 characters: ASCII letters, digits, ``_``, ``-`` and ``.``, starting
    with a letter. ``latest`` (in any case) is reserved: it is computed.

    >>> check_alias_name("prod-2.1")
    'prod-2.1'
    >>> check_alias_name("1abc")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ams.errors.InvalidArgumentError: alias name '1abc' must start with a letter ...
    """
    if not isinstance(name, str):
        raise InvalidArgumentTypeError(f"an alias name must be a str, not {type(name).__name__} "
                                       f"({_short(name)})")
    rule = (f"1 to {MAX_ALIAS_LENGTH} characters: letters, digits, '_', '-' and '.', starting "
            "with a letter")
    if not 1 <= len(name) <= MAX_ALIAS_LENGTH:
        raise InvalidArgumentError(f"alias name {_short(name)} is {len(name)} characters long; "
                                   f"an alias name is {rule}")
    if not _ALIAS_PATTERN.fullmatch(name):
        raise InvalidArgumentError(f"alias name {_short(name)} must start with a letter and use "
                                   f"only letters, digits, '_', '-' and '.' ({rule})")
    if name.lower() in RESERVED_NAMES:
        raise InvalidArgumentError(f"alias name {name!r} is reserved: 'latest' always means the "
                                   "highest version and cannot be set")
    return name


def parse_selector(value: Any) -> str | None:
    """The alias a version selector names (``"@champion"`` -> ``"champion"``), else None.

    Anything that is not a str starting with ``@`` (None, ``"latest"``, ints,
    lists) is not an alias selector: None. A malformed ``@name`` is an error.

    >>> parse_selector("@prod")
    'prod'
    >>> parse_selector("@latest")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ams.errors.InvalidArgumentError: alias name 'latest' is reserved: ...
    """
    if isinstance(value, str) and value.startswith(SELECTOR_PREFIX):
        return check_alias_name(value[len(SELECTOR_PREFIX):])
    return None


def default_user() -> str:
    """The OS user to record as ``set_by``; ``uid<N>`` when the system knows no name for it."""
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):  # no login variables and no passwd entry
        return f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"


# ------------------------------------------------------------------ writes
def set_alias(conn: Connection, application_name: str, domain_name: str, entry_type: str,
              alias: str, version: int, user: str,
              now: TimeLike | None = None) -> int | None:
    """Point ``alias`` at ``version``; return the version it pointed at before, or None.

    Appends one history row. Setting an alias to the version it already points
    at changes nothing and records nothing. The caller has checked that the
    version exists and holds the write lock.
    """
    check_alias_name(alias)
    version = _validate.version(version)
    key = (application_name, domain_name, entry_type)
    newest = _newest(conn, key, [alias]).get(alias)
    previous = newest[0] if newest else None
    if previous == version:
        return previous
    _append(conn, key, [(alias, version, previous, newest[1] if newest else None)], user, now)
    return previous


def remove_alias(conn: Connection, application_name: str, domain_name: str, entry_type: str,
                 alias: str, user: str, now: TimeLike | None = None) -> int | None:
    """Remove ``alias``; return the version it pointed at. An unset alias is a NotFoundError.

    The removal is a history row whose version is NULL.
    """
    removed = forget(conn, application_name, domain_name, entry_type, [alias], user, now)
    if alias not in removed:
        raise NotFoundError(f"alias {alias!r} is not set for {entry_type} of domain "
                            f"{domain_name!r} (application {application_name!r})")
    return removed[alias]


def forget(conn: Connection, application_name: str, domain_name: str, entry_type: str,
           aliases: Iterable[str], user: str, now: TimeLike | None = None) -> dict[str, int]:
    """Record the removal of each of ``aliases`` that is set; return ``{alias: version it had}``.

    For removals with ``force=True``: aliases that are not set are skipped.
    One read and one multi-row insert, whatever the number of aliases.
    """
    if isinstance(aliases, str):  # iterating it would forget one-letter aliases
        raise InvalidArgumentTypeError(f"aliases must be a list of alias names, not a str "
                                       f"({_short(aliases)})")
    names = sorted({check_alias_name(alias) for alias in aliases})
    key = (application_name, domain_name, entry_type)
    newest = _newest(conn, key, names)
    rows = [(alias, None, version, set_at) for alias, (version, set_at) in sorted(newest.items())
            if version is not None]
    _append(conn, key, rows, user, now)
    return {alias: previous for alias, _version, previous, _set_at in rows}


# ------------------------------------------------------------------ reads
def get_alias(conn: Connection, application_name: str, domain_name: str, entry_type: str,
              alias: str, at: TimeLike | None = None) -> int | None:
    """The version ``alias`` points at, or pointed at at the moment ``at``; None when unset.

    ``at`` is a datetime (naive means UTC) or an ISO-8601 string; a change
    stamped exactly at ``at`` counts. Before the first set, or after a removal,
    the answer is None.
    """
    check_alias_name(alias)
    key = (application_name, domain_name, entry_type)
    if at is None:
        newest = _newest(conn, key, [alias]).get(alias)
        return newest[0] if newest else None
    this_alias = (*_key_filter(key), _TABLE.c.alias == alias)
    # The last stamp at or before ``at`` (one index seek: MariaDB's optimizer
    # answers MAX from the index, where "ORDER BY set_at DESC LIMIT 1" could
    # make it walk back from the newest row), then the newest row with it.
    last_stamp = (sa.select(sa.func.max(_TABLE.c.set_at))
                  .where(*this_alias, _TABLE.c.set_at <= _utc_text(at, "at"))
                  .scalar_subquery())
    query = (sa.select(_TABLE.c.version).where(*this_alias, _TABLE.c.set_at == last_stamp)
             .order_by(_TABLE.c.id.desc()).limit(1))
    row = conn.execute(query).first()
    return None if row is None else row.version


def history(conn: Connection, application_name: str, domain_name: str, entry_type: str,
            alias: str) -> list[dict[str, Any]]:
    """Every change of ``alias``, oldest first: ``{"version", "previous", "set_at", "set_by"}``.

    ``version`` is None for a removal, ``previous`` None when the alias was
    unset before; ``set_at`` is an ISO-8601 UTC string with microseconds.
    """
    check_alias_name(alias)
    key = (application_name, domain_name, entry_type)
    query = (sa.select(_TABLE.c.version, _TABLE.c.previous, _TABLE.c.set_at, _TABLE.c.set_by)
             .where(*_key_filter(key), _TABLE.c.alias == alias)
             .order_by(_TABLE.c.id))
    return [dict(row._mapping) for row in conn.execute(query)]


def current(conn: Connection, application_name: str, domain_name: str,
            entry_type: str) -> dict[str, int]:
    """``{alias: version}`` of every alias of that entry that is set now."""
    return _current(conn, (application_name, domain_name, entry_type), None)


def pointing_at(conn: Connection, application_name: str, domain_name: str, entry_type: str,
                versions: Iterable[int]) -> dict[str, int]:
    """``{alias: version}`` of the aliases now on any of ``versions`` (the removal guard)."""
    wanted = sorted({int(version) for version in versions})
    if not wanted:
        return {}
    return _current(conn, (application_name, domain_name, entry_type), wanted)


# ------------------------------------------------------------------ internals
_Key = tuple[str, str, str]


def _key_filter(key: _Key) -> tuple[Any, ...]:
    application_name, domain_name, entry_type = key
    return (_TABLE.c.application_name == application_name, _TABLE.c.domain_name == domain_name,
            _TABLE.c.entry_type == entry_type)


def _newest(conn: Connection, key: _Key,
            aliases: list[str]) -> dict[str, tuple[int | None, str]]:
    """``{alias: (version, set_at)}`` of the newest row of each alias that has one."""
    if not aliases:
        return {}
    if len(aliases) == 1:  # the common case: one backward index seek
        query = (sa.select(_TABLE.c.alias, _TABLE.c.version, _TABLE.c.set_at)
                 .where(*_key_filter(key), _TABLE.c.alias == aliases[0])
                 .order_by(_TABLE.c.id.desc()).limit(1))
    else:
        newest_ids = (sa.select(sa.func.max(_TABLE.c.id))
                      .where(*_key_filter(key), _TABLE.c.alias.in_(aliases))
                      .group_by(_TABLE.c.alias))
        query = (sa.select(_TABLE.c.alias, _TABLE.c.version, _TABLE.c.set_at)
                 .where(_TABLE.c.id.in_(newest_ids)))
    return {row.alias: (row.version, row.set_at) for row in conn.execute(query)}


def _current(conn: Connection, key: _Key, versions: list[int] | None) -> dict[str, int]:
    newest_ids = (sa.select(sa.func.max(_TABLE.c.id)).where(*_key_filter(key))
                  .group_by(_TABLE.c.alias))
    query = (sa.select(_TABLE.c.alias, _TABLE.c.version)
             .where(_TABLE.c.id.in_(newest_ids), _TABLE.c.version.is_not(None))
             .order_by(_TABLE.c.alias))
    if versions is not None:
        query = query.where(_TABLE.c.version.in_(versions))
    return {row.alias: row.version for row in conn.execute(query)}


def _append(conn: Connection, key: _Key,
            changes: Sequence[tuple[str, int | None, int | None, str | None]],
            user: str, now: TimeLike | None) -> None:
    """Insert one row per ``(alias, version, previous, previous set_at)`` in one statement."""
    if not changes:
        return
    stamp = _utc_text(datetime.now(UTC) if now is None else now, "now")
    application_name, domain_name, entry_type = key
    rows = []
    for alias, version, previous, last_set_at in changes:
        set_at = stamp
        # Fixed-width ISO strings compare in time order.
        if last_set_at is not None and last_set_at > stamp:
            log.debug("alias %r: clock at %s is behind its last change at %s; keeping time order",
                      alias, stamp, last_set_at)
            set_at = last_set_at
        rows.append({"application_name": application_name, "domain_name": domain_name,
                     "entry_type": entry_type, "alias": alias, "version": version,
                     "previous": previous, "set_at": set_at, "set_by": user})
    conn.execute(_TABLE.insert(), rows)


def _utc_text(value: Any, what: str) -> str:
    """A moment as the stored text: ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidArgumentError(f"{what} {_short(value)} is not an ISO-8601 date and time "
                                       "(e.g. '2024-05-01T14:00:00+00:00')") from None
    elif isinstance(value, datetime):
        moment = value
    else:
        raise InvalidArgumentTypeError(f"{what} must be a datetime or an ISO-8601 str, not "
                                       f"{type(value).__name__} ({_short(value)})")
    try:
        if moment.tzinfo is None or moment.utcoffset() is None:
            moment = moment.replace(tzinfo=UTC)  # naive means UTC
        else:
            moment = moment.astimezone(UTC)
    except (OverflowError, ValueError) as error:
        raise InvalidArgumentError(f"{what} {_short(value)} is out of range in UTC: "
                                   f"{error}") from None
    return moment.isoformat(timespec="microseconds")
