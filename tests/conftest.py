"""Shared fixtures: one ``store_url`` / ``store`` per backend, real HDF5 and TorchScript files.

MariaDB
    The server comes from ``AMS_TEST_MARIADB_URL``, in one format only: a
    store URL without its database, ``mariadb://USER[:PASSWORD]@HOST[:PORT]/``
    (default ``mariadb://root:@127.0.0.1:3306/``; user and password
    percent-encoded as in a store URL; the trailing ``/`` may be left off).
    Any other scheme, or a database name, is an error: the tests make their
    own databases, so the account must be allowed to create and drop
    databases (and users, for the privilege tests).

    Each test module gets ONE database (``ams_test_<hex>``), made on first use
    and dropped at the module's end; after every test that used it, every
    table, view and sequence in it is dropped, so the next test sees it as
    empty as a new one (a test that leaves routines or events, changes its
    collation or drops it gets it re-created instead). The first
    ``fresh_mariadb_database()`` call of a test returns that database; further
    calls in the same test (a second store, a feed beside it...) make extra
    databases, dropped at the end of the test.

    With no server answering, MariaDB tests are skipped, unless
    ``AMS_REQUIRE_MARIADB=1`` (as in CI), where they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

DEFAULT_MARIADB_URL = "mariadb://root:@127.0.0.1:3306/"
MARIADB_URL_FORMAT = "mariadb://USER[:PASSWORD]@HOST[:PORT]/"
START_HINT = ("start one with: start-stop-daemon --start --oknodo --background "
              "--exec /usr/sbin/mariadbd (or set AMS_TEST_MARIADB_URL)")


# ------------------------------------------------------------------ MariaDB server
def _server_params() -> Dict[str, object]:
    from urllib.parse import unquote, urlsplit
    url = os.environ.get("AMS_TEST_MARIADB_URL", DEFAULT_MARIADB_URL)
    parts = urlsplit(url)
    if parts.scheme != "mariadb" or parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"AMS_TEST_MARIADB_URL must be {MARIADB_URL_FORMAT} "
                         f"(no database: the tests make their own), not {parts.scheme}://...")
    return {"user": unquote(parts.username or "root"), "password": unquote(parts.password or ""),
            "host": parts.hostname or "127.0.0.1", "port": parts.port or 3306}


def mariadb_admin():
    """A mysql-connector connection to the test server (no database selected)."""
    import mysql.connector
    params = _server_params()
    return mysql.connector.connect(connection_timeout=5, use_pure=True, **params)


_SERVER_STATE: Dict[str, object] = {}


def mariadb_available() -> bool:
    if "ok" not in _SERVER_STATE:
        params = _server_params()  # a malformed AMS_TEST_MARIADB_URL is an error, not a skip
        try:
            mariadb_admin().close()
            _SERVER_STATE["ok"] = True
        except Exception as error:  # noqa: BLE001 - any failure means "no server"
            _SERVER_STATE["ok"] = False
            _SERVER_STATE["why"] = f"{params['host']}:{params['port']}: {error}"
    return bool(_SERVER_STATE["ok"])


def require_mariadb() -> None:
    if mariadb_available():
        return
    message = f"no MariaDB server answers ({_SERVER_STATE.get('why')}); {START_HINT}"
    if os.environ.get("AMS_REQUIRE_MARIADB") == "1":
        pytest.fail(message)
    pytest.skip(message)


def mariadb_url(database: str) -> str:
    params = _server_params()
    auth = params["user"] + (f":{params['password']}" if params["password"] else "")
    return f"mariadb://{auth}@{params['host']}:{params['port']}/{database}"


def create_mariadb_database() -> str:
    """Create a fresh, uniquely named database on the test server; returns its name."""
    require_mariadb()
    name = f"ams_test_{uuid.uuid4().hex[:12]}"
    conn = mariadb_admin()
    try:
        conn.cursor().execute(f"CREATE DATABASE `{name}`")
    finally:
        conn.close()
    return name


def drop_mariadb_databases(names: List[str]) -> None:
    if not names:
        return
    conn = mariadb_admin()
    try:
        for name in names:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


# Everything a test can leave in a database, in one round trip: the database's own row
# (absent once dropped), its tables, views and sequences, and any routine or event.
_CONTENTS = (
    "SELECT 'schema', DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME"
    " FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %(db)s"
    " UNION ALL SELECT 'table', TABLE_NAME, TABLE_TYPE"
    " FROM information_schema.TABLES WHERE TABLE_SCHEMA = %(db)s"
    " UNION ALL SELECT 'routine', ROUTINE_NAME, ROUTINE_TYPE"
    " FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %(db)s"
    " UNION ALL SELECT 'event', EVENT_NAME, ''"
    " FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %(db)s"
)


class ModuleDatabase:
    """One test module's MariaDB database: made on first use, emptied after each test
    that used it (:meth:`empty`), dropped at the module's end (:meth:`drop`)."""

    def __init__(self) -> None:
        self.name: Optional[str] = None
        self.schema: List[tuple] = []  # [(charset, collation)] of the new database

    def take(self) -> str:
        """The store URL of the (empty) module database."""
        if self.name is None:
            self.name = create_mariadb_database()
            self.schema = self._contents()[0]
        return mariadb_url(self.name)

    def _contents(self, cursor=None):
        """([(charset, collation)] or [] once dropped, [(what, name, type)] of the rest)."""
        if cursor is None:
            conn = mariadb_admin()
            try:
                return self._contents(conn.cursor())
            finally:
                conn.close()
        cursor.execute(_CONTENTS, {"db": self.name})
        rows = [tuple(row) for row in cursor.fetchall()]
        return [row[1:] for row in rows if row[0] == "schema"], [row for row in rows if row[0] != "schema"]

    def empty(self) -> None:
        """Leave the database as a newly created one: drop every table, view and sequence
        (foreign keys off); re-create the database if anything else changed."""
        conn = mariadb_admin()
        try:
            cursor = conn.cursor()
            schema, objects = self._contents(cursor)
            if schema != self.schema or any(what != "table" for what, _name, _type in objects):
                cursor.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
                cursor.execute(f"CREATE DATABASE `{self.name}`")
                return
            cursor.execute("SET SESSION foreign_key_checks = 0")
            for kind in ("VIEW", "SEQUENCE", "TABLE"):
                names = [name for _what, name, table_type in objects
                         if table_type == kind or kind == "TABLE" and table_type not in ("VIEW", "SEQUENCE")]
                if names:
                    listed = ", ".join(f"`{self.name}`.`{name}`" for name in names)
                    cursor.execute(f"DROP {kind} IF EXISTS {listed}")
        finally:
            conn.close()

    def drop(self) -> None:
        if self.name is not None:
            drop_mariadb_databases([self.name])
            self.name = None


@pytest.fixture(scope="module")
def module_mariadb_database() -> ModuleDatabase:
    """This module's MariaDB database (see the module docstring); no server needed until used."""
    database = ModuleDatabase()
    yield database
    database.drop()


@pytest.fixture
def fresh_mariadb_database(module_mariadb_database) -> Callable[[], str]:
    """Factory of empty MariaDB databases; returns store URLs.

    The first call returns the module's database (emptied after the test), the
    others new databases (dropped after the test)."""
    created: List[str] = []
    took_module_database = []

    def make() -> str:
        if not took_module_database:
            url = module_mariadb_database.take()
            took_module_database.append(True)
            return url
        name = create_mariadb_database()
        created.append(name)
        return mariadb_url(name)

    yield make
    try:
        if took_module_database:
            module_mariadb_database.empty()
    finally:
        drop_mariadb_databases(created)


# ------------------------------------------------------------------ store fixtures
@pytest.fixture(params=["sqlite", "mariadb"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_url(backend, tmp_path, fresh_mariadb_database) -> str:
    """A URL to an empty store on each backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'ams.db'}"
    return fresh_mariadb_database()


@pytest.fixture
def store(store_url):
    """An open, empty store of application ``app`` on each backend."""
    from ams import AMSDataStore
    with AMSDataStore("app", store_url) as opened:
        yield opened


# ------------------------------------------------------------------ the command line, in-process
@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self):
        return json.loads(self.out)

    @property
    def error_line(self) -> str:
        """The one ``Error:`` line a failed command writes (asserting it is the only line)."""
        lines = self.err.splitlines()
        assert len(lines) == 1, f"expected one stderr line, got {self.err!r}"
        assert lines[0].startswith("Error: "), lines[0]
        assert "Traceback" not in self.err
        return lines[0]


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """``run_cli(*argv)`` -> Result of ``main(argv)``; no store settings from the environment."""
    monkeypatch.delenv("AMS_STORE_URL", raising=False)
    monkeypatch.delenv("AMS_APP_NAME", raising=False)
    capsys.readouterr()

    def run(*argv) -> Result:
        from ams.cli import main
        code = main([str(arg) for arg in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def cli(run_cli, store_url):
    """``cli(*argv)``: run a command against the test store of application ``app``."""
    return lambda *argv: run_cli("--url", store_url, "--name", "app", *argv)


# ------------------------------------------------------------------ RabbitMQ
@pytest.fixture
def broker():
    """A fresh exchange and queue on the test broker (tests/broker.py), deleted afterwards."""
    from broker import Broker, require_rabbitmq
    require_rabbitmq()
    opened = Broker()
    yield opened
    opened.close()


# ------------------------------------------------------------------ change feed (feed_source.py)
@pytest.fixture
def feed_url(backend, tmp_path, fresh_mariadb_database) -> str:
    """A URL to an empty database for a :class:`feed_source.FeedSource`, on each backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'feed.db'}"
    return fresh_mariadb_database()


@pytest.fixture
def source(feed_url):
    """A created, open :class:`feed_source.FeedSource` on ``feed_url``."""
    from feed_source import FeedSource
    opened = FeedSource(feed_url)
    opened.create()
    yield opened
    opened.close()


# ------------------------------------------------------------------ real files
@pytest.fixture
def make_h5(tmp_path) -> Callable[..., str]:
    """Write a real HDF5 file with ``inputs``/``outputs`` datasets; returns its path."""
    import h5py
    import numpy as np
    counter = {"n": 0}

    def make(name: str = None, rows: int = 4, directory: Path = None, seed: int = None) -> str:
        counter["n"] += 1
        folder = Path(directory or tmp_path / "files")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (name or f"file_{counter['n']}.h5")
        rng = np.random.default_rng(seed if seed is not None else counter["n"])
        with h5py.File(path, "w") as handle:
            handle["inputs"] = rng.random((rows, 2))
            handle["outputs"] = rng.random((rows, 1))
        return str(path)

    return make


@pytest.fixture(scope="session")
def _model_bytes(tmp_path_factory) -> bytes:
    import torch
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 1))).save(str(path))
    return path.read_bytes()


@pytest.fixture
def make_model(tmp_path, _model_bytes) -> Callable[..., str]:
    """Write a real TorchScript model (torch.jit.script + save); returns its path."""
    counter = {"n": 0}

    def make(name: str = None, directory: Path = None) -> str:
        counter["n"] += 1
        folder = Path(directory or tmp_path / "models")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (name or f"model_{counter['n']}.pt")
        path.write_bytes(_model_bytes)
        return str(path)

    return make


# ------------------------------------------------------------------ snapshots
def snapshot_store(url) -> Dict[str, list]:
    """Every row of every table, sorted: equal snapshots mean an unchanged store."""
    import sqlalchemy as sa

    from ams.url import StoreURL, parse_store_url
    parsed = url if isinstance(url, StoreURL) else parse_store_url(url)
    engine = sa.create_engine(parsed.sqlalchemy_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
            return {name: sorted(map(repr, conn.execute(sa.text(f"SELECT * FROM {_quote(conn, name)}"))))
                    for name in sorted(names)}
    finally:
        engine.dispose()


def _quote(conn, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def snapshot_files(*roots, skip=()) -> Dict[str, str]:
    """Path -> sha256 of every file below ``roots`` (but ``skip``)."""
    out = {}
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                if path in skip:
                    continue
                with open(path, "rb") as handle:
                    out[path] = hashlib.sha256(handle.read()).hexdigest()
    return out


@pytest.fixture
def unchanged(store, tmp_path):
    """Call ``unchanged()`` to snapshot, then ``unchanged.check()`` to assert nothing moved."""

    # A SQLite store's own file is compared by its rows (snapshot_store), not its bytes.
    own = {store.url.path, f"{store.url.path}-journal"} if store.url.backend == "sqlite" else set()

    class Guard:
        def __call__(self):
            self.db = snapshot_store(store.url)
            self.files = snapshot_files(tmp_path, skip=own)
            return self

        def check(self):
            after_db = snapshot_store(store.url)
            assert after_db == self.db, "the store changed"
            assert snapshot_files(tmp_path, skip=own) == self.files, "files changed"

    return Guard()


def copy_files(template: str, folder: Path, count: int, prefix: str) -> List[str]:
    """``count`` real HDF5 files (byte copies of ``template``), fast."""
    import shutil
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{prefix}_{index:04d}.h5"
        shutil.copyfile(template, path)
        paths.append(str(path))
    return paths


# ------------------------------------------------------------------ assertions
def h5py_opens(path: str) -> bool:
    """Whether ``h5py.File(path, "r")`` opens ``path``: the verdict ams's HDF5 check must give."""
    import h5py
    try:
        with h5py.File(path, "r"):
            return True
    except Exception:  # noqa: BLE001 - any failure means "h5py cannot open it"
        return False


def rejected(guard, error_type, builtin, fragment, call, *args, **kwargs):
    """The call fails with ``error_type`` (also a ``builtin``) naming ``fragment``; nothing changes.

    ``guard`` is the ``unchanged`` fixture after its snapshot (``guard = unchanged()``);
    None when the caller checks it right after a group of calls that each must fail.
    """
    from ams.errors import AMSStoreError
    assert issubclass(error_type, AMSStoreError) and issubclass(error_type, builtin)
    with pytest.raises(error_type) as info:
        call(*args, **kwargs)
    assert isinstance(info.value, builtin)
    assert fragment in str(info.value), str(info.value)
    if guard is not None:
        guard.check()
    return info.value


def count_records(store, record_type: str) -> int:
    """How many Sina records of ``record_type`` the store's database holds."""
    import sqlalchemy as sa
    engine = sa.create_engine(store.url.sqlalchemy_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT COUNT(*) FROM Record WHERE type = :t"),
                                {"t": record_type}).scalar()
    finally:
        engine.dispose()
