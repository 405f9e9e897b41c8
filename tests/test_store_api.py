"""Contract: AMSDataStore's lifecycle, URLs, masking, closed-store errors and the reference API.

Every public name of ``seeds/AMSDataStore-api.txt`` must exist with the
reference's parameters (in order; extras only after them, with defaults),
and every data call on a closed store must raise ``StoreClosedError`` (a
``RuntimeError``), never an ``AttributeError``.
"""

from __future__ import annotations

import inspect
import logging
import os
import uuid

import pytest

import ams
from ams import AMSDataStore, AMSModelDescr, UQAggregate, UQType
from ams.errors import (
    AMSStoreError,
    BadURLError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    ReadOnlyStoreError,
    StoreClosedError,
)

# name -> parameters of the reference (after self), in order.
REFERENCE = {
    "__init__": ["application_name", "url"],
    "is_open": [],
    "open": [],
    "close": [],
    "__enter__": [],
    "__exit__": ["exc_type", "exc_val", "exc_tb"],
    "find": ["domain_name", "filename", "entry_type", "version"],
    "add_data": ["domain_name", "data_files", "version", "metadata"],
    "add_model": ["domain_name", "model", "test_error", "val_error", "version", "metadata"],
    "add_candidates": ["domain_name", "data_files", "version", "metadata"],
    "remove_data": ["domain_name", "filenames", "version", "metadata", "purge"],
    "remove_models": ["domain_name", "models", "version", "metadata", "purge"],
    "remove_candidates": ["domain_name", "filenames", "version", "metadata", "purge"],
    "get_data_versions": ["domain_name", "associate_files"],
    "get_model_versions": ["domain_name", "associate_files"],
    "get_candidate_versions": ["domain_name", "associate_files"],
    "get_files": ["domain_name", "entry", "versions"],
    "get_candidate_files": ["domain_name", "versions"],
    "get_model_files": ["domain_name", "versions"],
    "get_data_files": ["domain_name", "versions"],
    "move": ["domain_name", "dest_root_path", "src_type", "dest_type", "filenames"],
    "search": ["domain_name", "entry", "version", "metadata"],
    "__str__": [],
    "suggest_model_file_name": ["domain_name"],
    "suggest_candidate_file_name": ["domain_name"],
    "suggest_data_file_name": ["domain_name"],
    # protected functions of the reference
    "_add_entries": ["domain_name", "entry_type", "filenames", "version", "metadata"],
    "_remove_entries": ["domain_name", "entry_type", "filenames", "version", "metadata", "purge"],
    "_get_entry_versions": ["domain_name", "entry_type", "associate_files"],
    "_suggest_entry_file_name": ["entry", "domain_name"],
}
# Reference defaults; ``list()``/``dict()`` defaults may be any empty value or None
# (a mutable default is the bug SPEC forbids).
EMPTY = object()
DEFAULTS = {
    "find": {"domain_name": None, "filename": None, "entry_type": None, "version": None},
    "add_data": {"data_files": EMPTY, "version": None, "metadata": EMPTY},
    "add_model": {"version": None, "metadata": EMPTY},
    "add_candidates": {"data_files": EMPTY, "version": None, "metadata": EMPTY},
    "remove_data": {"version": None, "metadata": None, "purge": True},
    "remove_models": {"version": None, "metadata": None, "purge": True},
    "remove_candidates": {"version": None, "metadata": None, "purge": True},
    "get_data_versions": {"associate_files": False},
    "get_model_versions": {"associate_files": False},
    "get_candidate_versions": {"associate_files": False},
    "get_files": {"versions": None},
    "get_candidate_files": {"versions": None},
    "get_model_files": {"versions": None},
    "get_data_files": {"versions": None},
    "search": {"domain_name": None, "entry": None, "version": None, "metadata": EMPTY},
    "suggest_model_file_name": {"domain_name": None},
    "suggest_candidate_file_name": {"domain_name": None},
    "suggest_data_file_name": {"domain_name": None},
    "_add_entries": {"version": None, "metadata": None},
    "_remove_entries": {"version": None, "metadata": None, "purge": True},
    "_get_entry_versions": {"associate_files": False},
}


def raises(error_type, builtin, fragment, call, *args, **kwargs):
    """Call and check the ams error type, its built-in base and a message fragment."""
    assert issubclass(error_type, AMSStoreError) and issubclass(error_type, builtin)
    with pytest.raises(error_type) as info:
        call(*args, **kwargs)
    assert isinstance(info.value, builtin)
    assert fragment in str(info.value), str(info.value)
    return info.value


# ------------------------------------------------------------------ the reference API
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_signature(name):
    function = getattr(AMSDataStore, name)
    assert callable(function)
    parameters = list(inspect.signature(function).parameters.values())
    assert parameters[0].name == "self"
    names = [p.name for p in parameters[1:]]
    expected = REFERENCE[name]
    assert names[:len(expected)] == expected, names
    for extra in parameters[1 + len(expected):]:  # extensions must stay optional
        assert extra.default is not inspect.Parameter.empty, extra.name
    for parameter in parameters[1:1 + len(expected)]:  # callable as the reference calls them
        assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, parameter.name
    by_name = {p.name: p for p in parameters}
    for key, default in DEFAULTS.get(name, {}).items():
        actual = by_name[key].default
        if default is EMPTY:
            assert actual is None or (actual == type(actual)() and not isinstance(actual, (list, dict, set))), \
                f"{name}({key}=...) must default to None or an immutable empty value, not {actual!r}"
        else:
            assert actual is default or actual == default, (name, key, actual)


def test_class_attributes_have_the_reference_values():
    assert AMSDataStore.entry_suffix == {"data": "h5", "models": "pt", "candidates": "h5"}
    assert AMSDataStore.entry_mime_types == {"data": "hdf5", "models": "zip", "candidates": "hdf5"}
    assert AMSDataStore.valid_entries == {"data", "candidates", "models"}
    assert AMSDataStore.valid_dbs == {"sqlite", "mariadb"}
    assert isinstance(AMSDataStore.valid_entries, set) and isinstance(AMSDataStore.valid_dbs, set)
    # protected attributes of the reference that carry state
    store = AMSDataStore("app", "x.db")
    assert store._application_name == "app"
    assert store._url.backend == "sqlite"


def test_public_names_exported():
    for name in ("AMSDataStore", "AMSModelDescr", "UQType", "UQAggregate", "errors"):
        assert hasattr(ams, name)
    assert {m.name for m in UQType} == {"Random", "DeltaUQ", "Faiss"}
    assert {m.name for m in UQAggregate} == {"max", "mean"}
    assert AMSModelDescr.__dataclass_fields__.keys() == {"path", "threshold", "uq_type", "uq_aggregate"}


def test_error_tree():
    from ams import errors
    expected = {
        "StoreClosedError": RuntimeError, "BadURLError": ValueError,
        "UnknownEntryTypeError": ValueError, "MissingFileError": FileNotFoundError,
        "WrongFileFormatError": ValueError, "DuplicateEntryError": ValueError,
        "NotFoundError": LookupError, "InvalidArgumentError": ValueError,
        "InvalidArgumentTypeError": TypeError, "InvalidMetadataError": ValueError,
    }
    for name, builtin in expected.items():
        cls = getattr(errors, name)
        assert issubclass(cls, errors.AMSStoreError) and issubclass(cls, builtin), name


# ------------------------------------------------------------------ lifecycle
def test_lifecycle(store_url, backend, tmp_path, make_h5, capfd):
    store = AMSDataStore("app", store_url)
    assert store.is_open() is False
    if backend == "sqlite":  # construction does no I/O
        assert not (tmp_path / "store").exists()
    assert store.open() is store
    assert store.is_open() is True
    if backend == "sqlite":  # the file and its folder are created on open
        assert (tmp_path / "store" / "ams.db").is_file()
    assert "Record" in store.created_tables  # tables are created on first open
    assert store.open() is store  # twice is harmless
    assert store.add_data("EOS", [make_h5()]) == 1
    store.close()
    with AMSDataStore("app", store_url) as again:
        assert again.created_tables == []  # an existing store: nothing to create
    assert capfd.readouterr() == ("", "")  # the library logs, it never prints
    assert store.is_open() is False
    store.close()  # twice is harmless
    raises(StoreClosedError, RuntimeError, "closed", store.get_data_versions, "EOS")
    with store as same:  # the context manager reopens, sees the data, and closes
        assert same is store and store.is_open()
        assert store.get_data_versions("EOS") == [1]
    assert not store.is_open()
    with pytest.raises(KeyError):  # exceptions propagate, the store still closes
        with AMSDataStore("app", store_url) as other:
            raise KeyError("boom")
    assert not other.is_open()


def test_sqlite_url_forms(tmp_path, monkeypatch, make_h5):
    monkeypatch.chdir(tmp_path)
    h5 = make_h5()
    forms = {
        "sqlite:///rel/dir/a.db": tmp_path / "rel" / "dir" / "a.db",
        f"sqlite:///{tmp_path}/abs/b.db": tmp_path / "abs" / "b.db",
        "plain/c.db": tmp_path / "plain" / "c.db",
        tmp_path / "pathlike" / "d.db": tmp_path / "pathlike" / "d.db",
    }
    for url, path in forms.items():
        store = AMSDataStore("app", url)
        assert not path.exists()
        assert store.url.backend == "sqlite" and store.url.path == str(path)
        with store:
            assert path.is_file()
            assert store.get_data_files("EOS") == []
    with AMSDataStore("app", "sqlite:///rel/dir/a.db") as store:  # reopening keeps the data
        store.add_data("EOS", [h5])
    monkeypatch.chdir(tmp_path / "plain")  # relative URLs were fixed at construction
    with AMSDataStore("app", str(tmp_path / "rel" / "dir" / "a.db")) as store:
        assert store.get_data_files("EOS") == [h5]


@pytest.mark.parametrize("url, fragment, names_forms", [
    ("ftp://host/x", "'ftp'", True),
    ("postgresql://u:pw@h/db", "'postgresql'", True),
    ("", "empty", True),
    ("   ", "empty", True),
    ("sqlite://", "sqlite:///", True),
    ("sqlite:///:memory:", "memory", False),
    ("mariadb://u:pw@/db", "no host", True),
    ("mariadb://u:pw@host:3306/", "one database", True),
    ("mariadb://u:pw@host:notaport/db", "bad port", False),
    (42, "int", True),
    (None, "NoneType", True),
])
def test_bad_urls_rejected_at_construction(url, fragment, names_forms):
    error = raises(BadURLError, ValueError, fragment, AMSDataStore, "app", url)
    message = str(error)
    assert ":pw@" not in message  # the password is masked
    if names_forms:
        assert "mariadb://user:password@host:port/database" in message, message


def test_mariadb_url_forms():
    for scheme in ("mariadb", "mariadb+mysqlconnector", "mysql+mysqlconnector", "MariaDB"):
        store = AMSDataStore("app", f"{scheme}://ams:s3cr%40t@db.example:3307/cat")
        assert (store.url.backend, store.url.host, store.url.port, store.url.database) == \
            ("mariadb", "db.example", 3307, "cat")
        assert store.url.user == "ams" and store.url.password == "s3cr@t"
        assert store.is_open() is False  # construction does not connect
    assert AMSDataStore("app", "mariadb://ams@db/cat").url.port == 3306


@pytest.mark.parametrize("name, error, builtin, fragment", [
    (None, InvalidArgumentTypeError, TypeError, "application_name"),
    (3, InvalidArgumentTypeError, TypeError, "int"),
    ("", InvalidArgumentError, ValueError, "application_name"),
    ("x" * 256, InvalidArgumentError, ValueError, "255"),
])
def test_bad_application_name(name, error, builtin, fragment):
    raises(error, builtin, fragment, AMSDataStore, name, "x.db")


# ------------------------------------------------------------------ masking
def test_str_and_repr_mask_the_password(tmp_path):
    store = AMSDataStore("app", "mariadb://ams:Sup3rS3cret@db.example:3307/cat")
    for text in (str(store), repr(store), str(store.url), repr(store.url)):
        assert "Sup3rS3cret" not in text
        assert "db.example" in text and "cat" in text
    assert "app" in str(store) and "closed" in str(store)
    sqlite_store = AMSDataStore("myapp", tmp_path / "a.db")
    assert str(tmp_path / "a.db") in str(sqlite_store) and "myapp" in repr(sqlite_store)
    with sqlite_store:
        assert "open" in str(sqlite_store)


def test_password_not_logged_nor_in_errors(fresh_mariadb_database, make_h5, caplog):
    """A real password-protected MariaDB account: logs, str and errors never show the password."""
    from conftest import mariadb_admin
    url = fresh_mariadb_database()
    database = url.rsplit("/", 1)[1]
    user, password = f"ams_{uuid.uuid4().hex[:8]}", "Pw_" + uuid.uuid4().hex
    admin = mariadb_admin()
    cursor = admin.cursor()
    try:
        cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        cursor.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'")
        host_url = url.split("@", 1)[1]
        caplog.set_level(logging.DEBUG)
        with AMSDataStore("app", f"mariadb://{user}:{password}@{host_url}") as store:
            store.add_data("EOS", [make_h5()], metadata={"k": 1})
            store.get_data_files("EOS")
            assert password not in str(store) and password not in repr(store)
        with pytest.raises(StoreClosedError) as info:  # an error message that names the store
            store.get_data_files("EOS")
        assert user in str(info.value) and ":***@" in str(info.value)
        assert password not in str(info.value)
        with AMSDataStore("app", f"mariadb://{user}:{password}@{host_url}", read_only=True) as reader:
            with pytest.raises(ReadOnlyStoreError) as info:
                reader.remove_data("EOS", None)
            assert ":***@" in str(info.value) and password not in str(info.value)
            assert password not in str(reader) and password not in repr(reader.url)
        assert caplog.records, "expected log lines"
        assert password not in caplog.text
    finally:
        cursor.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()


# ------------------------------------------------------------------ closed store
def _closed_calls(h5, model_path):
    model = AMSModelDescr(model_path, 0.5, UQType.Random)
    return {
        "find": lambda s: s.find(),
        "search": lambda s: s.search("EOS", "data", "latest", {"a": 1}),
        "add_data": lambda s: s.add_data("EOS", [h5]),
        "add_candidates": lambda s: s.add_candidates("EOS", [h5]),
        "add_model": lambda s: s.add_model("EOS", model, 0.1, 0.2),
        "remove_data": lambda s: s.remove_data("EOS", [h5]),
        "remove_models": lambda s: s.remove_models("EOS", [model_path]),
        "remove_candidates": lambda s: s.remove_candidates("EOS", None),
        "get_data_versions": lambda s: s.get_data_versions("EOS"),
        "get_model_versions": lambda s: s.get_model_versions("EOS", True),
        "get_candidate_versions": lambda s: s.get_candidate_versions("EOS"),
        "get_files": lambda s: s.get_files("EOS", "data", "latest"),
        "get_data_files": lambda s: s.get_data_files("EOS"),
        "get_model_files": lambda s: s.get_model_files("EOS", 1),
        "get_candidate_files": lambda s: s.get_candidate_files("EOS", [1]),
        "move": lambda s: s.move("EOS", os.path.dirname(h5) + "/dest", "candidates", "data", [h5]),
        "created_tables": lambda s: s.created_tables,
    }


def test_every_data_call_on_a_closed_store(store_url, make_h5, make_model):
    h5, model_path = make_h5(), make_model()
    never_opened = AMSDataStore("app", store_url)
    closed = AMSDataStore("app", store_url)
    with closed:
        closed.add_candidates("EOS", [make_h5()])
    for store in (never_opened, closed):
        for name, call in _closed_calls(h5, model_path).items():
            error = raises(StoreClosedError, RuntimeError, "closed", call, store)
            assert "open()" in str(error), name
    with AMSDataStore("app", store_url) as store:  # nothing was written by the rejected calls
        assert store.find() == store.search()
        assert [e["entry_type"] for e in store.find()] == ["candidates"]


def test_suggest_names_need_no_connection(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = AMSDataStore("app", "never-opened.db")
    name = store.suggest_data_file_name("EOS")  # under root_path/data: the db's folder
    assert os.path.basename(name).startswith("EOS_")
    assert os.path.dirname(name) == os.path.join(os.path.realpath(tmp_path), "data")
    assert not os.path.exists("never-opened.db")


def test_read_only_store_refuses_writes(store, store_url, make_h5):
    h5 = make_h5()
    store.add_data("EOS", [h5])
    with AMSDataStore("app", store_url, read_only=True) as reader:
        assert reader.get_data_files("EOS") == [h5]
        raises(ReadOnlyStoreError, RuntimeError, "read-only", reader.add_data, "EOS", [make_h5()])
        raises(ReadOnlyStoreError, RuntimeError, "read-only", reader.remove_data, "EOS", [h5])
    assert store.get_data_files("EOS") == [h5] and os.path.exists(h5)


def test_no_free_pooled_connection_is_a_backend_error(store):
    """Threads beyond the pool: one clear BackendError, not SQLAlchemy's TimeoutError."""
    from ams.errors import BackendError
    engine = store._catalog.engine
    engine.pool._timeout = 0.05  # as if every connection stayed busy past the pool's timeout
    held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]
    try:
        with pytest.raises(BackendError, match="no free database connection"):
            store.find("EOS")
    finally:
        for conn in held:
            conn.close()
    assert store.find("EOS") == []


def test_a_sqlite_file_of_another_kind_is_never_extended(tmp_path, run_cli):
    """Opening for writing a SQLite file that holds tables but no Kosh store refuses, in
    Python and on the command line, and leaves the file exactly as it was."""
    import hashlib
    import sqlite3

    from ams.errors import BackendError
    legacy = tmp_path / "legacy.db"
    with sqlite3.connect(legacy) as conn:
        conn.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, filename TEXT)")
    before = hashlib.sha256(legacy.read_bytes()).hexdigest()
    with pytest.raises(BackendError, match=r"not a Kosh store \(tables: entries\).*import"):
        AMSDataStore("app", f"sqlite:///{legacy}").open()
    result = run_cli("--url", f"sqlite:///{legacy}", "--name", "app", "create")
    assert result.code == 1 and "not a Kosh store" in result.error_line
    assert hashlib.sha256(legacy.read_bytes()).hexdigest() == before
