"""Shared fixtures: one ``store_url`` / ``store`` per backend, real HDF5 and TorchScript files.

MariaDB comes from ``AMS_TEST_MARIADB_URL`` (default
``mariadb://root:@127.0.0.1:3306/``); each test gets a fresh database that is
dropped afterwards. With no server answering, MariaDB tests are skipped,
unless ``AMS_REQUIRE_MARIADB=1`` (as in CI), where they fail.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Callable, Dict, List

import pytest

DEFAULT_MARIADB_URL = "mariadb://root:@127.0.0.1:3306/"
START_HINT = ("start one with: start-stop-daemon --start --oknodo --background "
              "--exec /usr/sbin/mariadbd (or set AMS_TEST_MARIADB_URL)")


# ------------------------------------------------------------------ MariaDB server
def _server_params() -> Dict[str, object]:
    from urllib.parse import unquote, urlsplit
    parts = urlsplit(os.environ.get("AMS_TEST_MARIADB_URL", DEFAULT_MARIADB_URL))
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
        try:
            mariadb_admin().close()
            _SERVER_STATE["ok"] = True
        except Exception as error:  # noqa: BLE001 - any failure means "no server"
            _SERVER_STATE["ok"] = False
            _SERVER_STATE["why"] = str(error)
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


@pytest.fixture
def fresh_mariadb_database() -> Callable[[], str]:
    """Factory of fresh MariaDB databases (dropped at teardown); returns store URLs."""
    created: List[str] = []

    def make() -> str:
        name = create_mariadb_database()
        created.append(name)
        return mariadb_url(name)

    yield make
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


# ------------------------------------------------------------------ RabbitMQ
@pytest.fixture
def broker():
    """A fresh exchange and queue on the test broker (tests/broker.py), deleted afterwards."""
    from broker import Broker, require_rabbitmq
    require_rabbitmq()
    opened = Broker()
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
