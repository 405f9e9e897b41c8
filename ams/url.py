"""Parse a store URL into a typed result, and mask its password.

Accepted forms:

* SQLite (the embedded default): ``sqlite:///relative/path.db``,
  ``sqlite:////absolute/path.db`` or a plain file path.
* MariaDB: ``mariadb://user:password@host:port/database``, also spelled
  ``mariadb+mysqlconnector://`` or ``mysql+mysqlconnector://``.

>>> u = parse_store_url("mariadb://ams:s3cret@db.example:3307/catalogue")
>>> (u.backend, u.host, u.port, u.database)
('mariadb', 'db.example', 3307, 'catalogue')
>>> str(u)
'mariadb://ams:***@db.example:3307/catalogue'
>>> parse_store_url("sqlite:////tmp/ams.db").path
'/tmp/ams.db'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, cast
from urllib.parse import quote, unquote, urlsplit

from .errors import BadURLError

__all__ = ["StoreURL", "parse_store_url", "ACCEPTED_FORMS"]

ACCEPTED_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, a plain file path, "
    "or mariadb://user:password@host:port/database "
    "(also mariadb+mysqlconnector:// and mysql+mysqlconnector://)"
)
_MARIADB_SCHEMES = {"mariadb", "mariadb+mysqlconnector", "mysql+mysqlconnector"}
_DEFAULT_MARIADB_PORT = 3306


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL. ``str()`` and ``repr()`` never show the password."""

    backend: str
    path: Optional[str] = None
    user: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    host: Optional[str] = None
    port: Optional[int] = None
    database: Optional[str] = None

    def __str__(self) -> str:
        if self.backend == "sqlite":
            return "sqlite:///" + cast(str, self.path)  # set for every sqlite URL
        auth = quote(self.user or "", safe="")
        if self.password:
            auth += ":***"
        return f"mariadb://{auth}@{self.host}:{self.port}/{self.database}"

    def __repr__(self) -> str:
        return f"StoreURL({str(self)!r})"

    @property
    def location(self) -> str:
        """Where the store lives, for messages: a path, or host:port/database."""
        if self.backend == "sqlite":
            return cast(str, self.path)
        return f"{self.host}:{self.port}/{self.database}"

    def sqlalchemy_url(self, hide_password: bool = False) -> str:
        """The URL SQLAlchemy (and ``kosh.connect``) take for this store."""
        if self.backend == "sqlite":
            return "sqlite:///" + cast(str, self.path)  # set for every sqlite URL
        auth = quote(self.user or "", safe="")
        if self.password:
            auth += ":" + ("***" if hide_password else quote(self.password, safe=""))
        return f"mysql+mysqlconnector://{auth}@{self.host}:{self.port}/{quote(cast(str, self.database), safe='')}"


def parse_store_url(url: "str | os.PathLike[str]") -> StoreURL:
    """Turn ``url`` into a :class:`StoreURL`; raise :class:`BadURLError` otherwise.

    Relative SQLite paths are made absolute against the current directory, so
    the store does not move when the process changes directory.

    >>> parse_store_url("ftp://x").backend
    Traceback (most recent call last):
    ...
    ams.errors.BadURLError: unsupported store URL scheme 'ftp'; accepted: ...
    """
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if not isinstance(url, str):
        raise BadURLError(f"store URL must be a string or a path, not {type(url).__name__}; "
                          f"accepted: {ACCEPTED_FORMS}")
    if not url.strip():
        raise BadURLError(f"store URL is empty; accepted: {ACCEPTED_FORMS}")
    if "\x00" in url:
        raise BadURLError("store URL contains a NUL character")
    if "://" not in url:
        return StoreURL(backend="sqlite", path=os.path.abspath(os.path.expanduser(url)))
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise BadURLError("SQLite URL needs a path after 'sqlite:///' "
                              f"(got {_mask(url)!r}); accepted: {ACCEPTED_FORMS}")
        path = rest[1:]  # sqlite:///rel -> 'rel', sqlite:////abs -> '/abs'
        if path in ("", ":memory:"):
            raise BadURLError("an in-memory SQLite store cannot be persistent; give a file path")
        return StoreURL(backend="sqlite", path=os.path.abspath(unquote(path)))
    if scheme in _MARIADB_SCHEMES:
        return _parse_mariadb(url)
    raise BadURLError(f"unsupported store URL scheme {scheme!r}; accepted: {ACCEPTED_FORMS}")


def _parse_mariadb(url: str) -> StoreURL:
    parts = urlsplit(url)
    try:
        port = parts.port or _DEFAULT_MARIADB_PORT
    except ValueError:
        raise BadURLError(f"bad port in store URL {_mask(url)!r}") from None
    database = unquote(parts.path.lstrip("/"))
    if not parts.hostname:
        raise BadURLError(f"MariaDB URL has no host: {_mask(url)!r}; accepted: {ACCEPTED_FORMS}")
    if not database or "/" in database:
        raise BadURLError(f"MariaDB URL must name one database: {_mask(url)!r}; "
                          f"accepted: {ACCEPTED_FORMS}")
    return StoreURL(
        backend="mariadb",
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        host=parts.hostname,
        port=port,
        database=database,
    )


def _mask(url: str) -> str:
    """Hide a password in a raw URL string (for error messages).

    >>> _mask("mariadb://u:pw@h/db")
    'mariadb://u:***@h/db'
    """
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    auth, _, tail = rest.rpartition("@")
    if ":" in auth:
        auth = auth.split(":", 1)[0] + ":***"
    return f"{scheme}://{auth}@{tail}"


def mask_password(text: str, password: Optional[str]) -> str:
    """Replace every occurrence of ``password`` (and its URL-quoted form) in ``text``."""
    if not password:
        return text
    for form in {password, quote(password, safe="")}:
        text = text.replace(form, "***")
    return text
