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
import re
from dataclasses import dataclass, field
from typing import Optional, cast
from urllib.parse import quote, unquote, urlsplit

from .errors import BadURLError

__all__ = ["StoreURL", "parse_store_url", "ACCEPTED_FORMS", "mask_url", "mask_password",
           "mask_secrets", "password_of"]

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
                              f"(got {mask_url(url)!r}); accepted: {ACCEPTED_FORMS}")
        path = rest[1:]  # sqlite:///rel -> 'rel', sqlite:////abs -> '/abs'
        if path in ("", ":memory:"):
            raise BadURLError("an in-memory SQLite store cannot be persistent; give a file path")
        return StoreURL(backend="sqlite", path=os.path.abspath(unquote(path)))
    if scheme in _MARIADB_SCHEMES:
        return _parse_mariadb(url)
    raise BadURLError(f"unsupported store URL scheme {scheme!r}; accepted: {ACCEPTED_FORMS}")


def _parse_mariadb(url: str) -> StoreURL:
    _refuse_unquoted_userinfo(url)
    parts = urlsplit(url)
    try:
        port = parts.port or _DEFAULT_MARIADB_PORT
    except ValueError:
        raise BadURLError(f"bad port in store URL {mask_url(url)!r}") from None
    database = unquote(parts.path.lstrip("/"))
    if not parts.hostname:
        raise BadURLError(f"MariaDB URL has no host: {mask_url(url)!r}; accepted: {ACCEPTED_FORMS}")
    if not database or "/" in database:
        raise BadURLError(f"MariaDB URL must name one database: {mask_url(url)!r}; "
                          f"accepted: {ACCEPTED_FORMS}")
    return StoreURL(
        backend="mariadb",
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        host=parts.hostname,
        port=port,
        database=database,
    )


_QUOTE_HINT = "urllib.parse.quote(password, safe='')"


def _refuse_unquoted_userinfo(url: str) -> None:
    """Refuse a user or password holding an unquoted ``/``, ``?`` or ``#``.

    Those end the ``user:password@host:port`` part of a URL, so a password such
    as ``p/ss`` would otherwise be misread as a host and a port ("bad port") while
    the masked URL in the message looks valid. An unquoted ``@`` is unambiguous
    (the last ``@`` ends the credentials; a host holds none) and is accepted. The
    message never shows the password.

    >>> _refuse_unquoted_userinfo("mariadb://ams:p/ss@db:3306/x")
    Traceback (most recent call last):
    ...
    ams.errors.BadURLError: the user name or password in the MariaDB URL 'mariadb://ams:***@db:3306/x' holds a character that must be URL-quoted (one of / ? #); quote it, e.g. with urllib.parse.quote(password, safe='')
    """
    rest = url.split("://", 1)[1]
    if "@" not in rest:
        return
    userinfo = rest.rpartition("@")[0]
    if any(char in userinfo for char in "/?#"):
        raise BadURLError(f"the user name or password in the MariaDB URL {mask_url(url)!r} holds "
                          f"a character that must be URL-quoted (one of / ? #); quote it, "
                          f"e.g. with {_QUOTE_HINT}")


def password_of(url: Optional[str]) -> Optional[str]:
    """The password written in a raw URL string (as written: maybe URL-quoted), or None.

    Everything between the first ``:`` after ``://`` and the last ``@`` counts,
    so a password holding unquoted ``@ / : ? #`` is found whole.

    >>> password_of("mariadb://ams:p/ss@db/x"), password_of("sqlite:///a.db")
    ('p/ss', None)
    """
    if not url or "://" not in url or "@" not in url:
        return None
    auth = url.split("://", 1)[1].rpartition("@")[0]
    return auth.split(":", 1)[1] if ":" in auth else None


def mask_url(url: str) -> str:
    """Hide the password of a raw URL string (for error messages), however it is spelled.

    >>> mask_url("mariadb://u:pw@h/db"), mask_url("mariadb://u:p/s@s@h/db")
    ('mariadb://u:***@h/db', 'mariadb://u:***@h/db')
    """
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    auth, _, tail = rest.rpartition("@")
    if ":" in auth:
        auth = auth.split(":", 1)[0] + ":***"
    return f"{scheme}://{auth}@{tail}"


_mask = mask_url  # the former private name


def mask_password(text: str, password: Optional[str]) -> str:
    """Replace every occurrence of ``password`` (as given, URL-quoted or unquoted) in ``text``."""
    if not password:
        return text
    for form in sorted({password, quote(password, safe=""), unquote(password)}, key=len,
                       reverse=True):
        if form:
            text = text.replace(form, "***")
    return text


_URL_CREDENTIALS = re.compile(r"(://[^:/@\s]*:)[^\s/]*@")


def mask_secrets(text: str, password: Optional[str] = None) -> str:
    """Hide ``password`` (see :func:`mask_password`) and any ``scheme://user:password@`` in ``text``.

    The one masker of the package: the CLI runs every message, log line and
    traceback through it. (SQLAlchemy's ``make_url(...).render_as_string(
    hide_password=True)`` only serves well-formed URLs, not free text or the
    malformed URLs an error is about.)

    >>> mask_secrets("bad: mariadb://ams:pw@db/x")
    'bad: mariadb://ams:***@db/x'
    >>> mask_secrets("mariadb://ams:p/w@db/x failed", password_of("mariadb://ams:p/w@db/x"))
    'mariadb://ams:***@db/x failed'
    """
    return _URL_CREDENTIALS.sub(r"\1***@", mask_password(text, password))
