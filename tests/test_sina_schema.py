"""Tests of ams.catalog.schema.create_tables on SQLite and on MariaDB.

MariaDB tests use an empty database from conftest's ``fresh_mariadb_database``
(the server at AMS_TEST_MARIADB_URL, in the format tests/conftest.py documents);
they are skipped when no server answers, unless AMS_REQUIRE_MARIADB=1.
"""

from __future__ import annotations

import multiprocessing

import pytest
import sqlalchemy as sa
from sina.datastores import sql_schema
from sqlalchemy.dialects import mysql
from sqlalchemy.pool import NullPool

from ams.catalog.schema import MARIADB_COLLATION, create_tables
from ams.url import parse_store_url

SINA_TABLES = set(sql_schema.Base.metadata.tables)
AMS_INDEXES = {
    "ams_stringdata_name_value",
    "ams_scalardata_name_value",
    "ams_liststringdataentry_name_value",
    "ams_relationship_object_predicate",
}
SINA_INDEXES = {ix.name for t in sql_schema.Base.metadata.tables.values() for ix in t.indexes}
RECORD = sql_schema.Record.__table__
DOCUMENT = sql_schema.Document.__table__


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def mariadb_url(fresh_mariadb_database):
    """SQLAlchemy URL of an empty MariaDB database (conftest.py's ``fresh_mariadb_database``)."""
    return parse_store_url(fresh_mariadb_database()).sqlalchemy_url()


@pytest.fixture
def mariadb_engine(mariadb_url):
    engine = sa.create_engine(mariadb_url, poolclass=NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "mariadb"])
def backend(request, tmp_path):
    """(what to give kosh.connect, an engine) for an empty database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "données" / "store.db"
        path.parent.mkdir()
        target = str(path)
        engine = sa.create_engine(f"sqlite:///{path}", poolclass=NullPool)
    else:
        target = request.getfixturevalue("mariadb_url")
        engine = sa.create_engine(target, poolclass=NullPool)
    yield target, engine
    engine.dispose()


# ---------------------------------------------------------------- helpers


def snapshot(engine) -> list:
    """Everything that defines the schema, to compare before/after."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return conn.exec_driver_sql(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").all()
        tables = conn.exec_driver_sql("SHOW TABLES").scalars().all()
        return sorted(conn.exec_driver_sql(f"SHOW CREATE TABLE `{t}`").one() for t in tables)


def index_names(engine) -> set[str]:
    inspector = sa.inspect(engine)
    names = set()
    for table in inspector.get_table_names():
        names.update(ix["name"] for ix in inspector.get_indexes(table))
    return names


def create_in_child(url, barrier, results):
    """Run create_tables in a forked process once all processes are ready."""
    engine = sa.create_engine(url, poolclass=NullPool)
    barrier.wait(timeout=30)
    results.put(create_tables(engine))


# ---------------------------------------------------------------- both backends


def test_creates_sina_tables_and_ams_indexes(backend):
    _, engine = backend
    created = create_tables(engine)
    assert SINA_TABLES | AMS_INDEXES <= set(created)
    assert len(created) == len(set(created))
    inspector = sa.inspect(engine)
    assert set(inspector.get_table_names()) == SINA_TABLES
    for name, table in sql_schema.Base.metadata.tables.items():
        got = [(c["name"], c["nullable"]) for c in inspector.get_columns(name)]
        assert got == [(c.name, c.nullable) for c in table.columns], name
    assert SINA_INDEXES | AMS_INDEXES <= index_names(engine)


def test_second_call_creates_and_changes_nothing(backend):
    _, engine = backend
    assert create_tables(engine)
    before = snapshot(engine)
    assert create_tables(engine) == []
    assert snapshot(engine) == before


def test_concurrent_first_calls_all_succeed(backend):
    target, engine = backend
    url = engine.url.render_as_string(hide_password=False)
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=create_in_child, args=(url, barrier, results)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    created = [name for _ in procs for name in results.get(timeout=5)]
    assert len(created) == len(set(created)), "an object was reported created twice"
    assert SINA_TABLES | AMS_INDEXES <= set(created)
    assert create_tables(engine) == []


def test_plain_kosh_round_trip(backend, tmp_path):
    import kosh

    target, engine = backend
    create_tables(engine)
    before = snapshot(engine)
    on_target = []  # Kosh also runs an in-memory SQLite store of its own: ignore it

    def watch(conn, cursor, statement, *args):
        if conn.engine.url.database == engine.url.database:
            on_target.append(statement.lstrip().split()[0].upper())

    data_dir = tmp_path / "données"
    data_dir.mkdir(exist_ok=True)
    lower, upper = data_dir / "a.h5", data_dir / "A.h5"
    lower.write_bytes(b"lower")
    upper.write_bytes(b"upper")
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", watch)
    try:
        store = kosh.connect(target)
        ensemble = store.create_ensemble(name="Ωmega-é", metadata={"application_name": "app"})
        dataset = ensemble.create(name="data", metadata={"version": 1})
        dataset.associate(str(lower), "hdf5", metadata={
            "s": "Été", "i": 3, "f": 0.5, "l": [1, 2], "ls": ["x", "Y"]})
        dataset.associate(str(upper), "hdf5", metadata={"s": "été"})
        store.close()

        store = kosh.connect(target)
        assert list(store.find_ensembles(name="ωmega-é")) == []
        (ensemble,) = store.find_ensembles(name="Ωmega-é")
        assert ensemble.application_name == "app"
        (dataset,) = ensemble.find_datasets(name="data")
        assert dataset.version == 1
        files = {f.uri: f.listattributes(dictionary=True) for f in dataset.find()}
        store.close()
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", watch)

    assert set(files) == {str(lower), str(upper)}
    attrs = files[str(lower)]
    assert (attrs["s"], attrs["i"], attrs["f"], attrs["l"], attrs["ls"]) == \
        ("Été", 3, 0.5, [1, 2], ["x", "Y"])
    assert type(attrs["i"]) is int
    assert files[str(upper)]["s"] == "été"
    assert files[str(lower)]["mime_type"] == "hdf5"
    assert "INSERT" in on_target and "SELECT" in on_target
    assert not {"CREATE", "ALTER", "DROP"} & set(on_target), "kosh tried to change the schema"
    assert snapshot(engine) == before


# ---------------------------------------------------------------- SQLite only


def test_sqlite_schema_is_sinas_plus_ams_indexes(tmp_path):
    ours = sa.create_engine(f"sqlite:///{tmp_path / 'ours.db'}", poolclass=NullPool)
    sinas = sa.create_engine(f"sqlite:///{tmp_path / 'sina.db'}", poolclass=NullPool)
    create_tables(ours)
    sql_schema.Base.metadata.create_all(sinas)
    extra = [row for row in snapshot(ours) if row[1] in AMS_INDEXES]
    assert {row[1] for row in extra} == AMS_INDEXES

    def normalized(rows):  # constraint order inside CREATE TABLE follows set order
        return [(*row[:3], sorted(line.strip(" ,") for line in (row[3] or "").splitlines()))
                for row in rows]

    ours_sina = [row for row in snapshot(ours) if row[1] not in AMS_INDEXES]
    assert normalized(ours_sina) == normalized(snapshot(sinas))


def test_sqlite_store_made_by_kosh_gets_only_the_ams_indexes(tmp_path):
    import kosh

    path = tmp_path / "kosh.db"
    kosh.connect(str(path)).close()
    engine = sa.create_engine(f"sqlite:///{path}", poolclass=NullPool)
    before = snapshot(engine)
    assert sorted(create_tables(engine)) == sorted(AMS_INDEXES)
    assert [row for row in snapshot(engine) if row[1] not in AMS_INDEXES] == before
    assert create_tables(engine) == []


# ---------------------------------------------------------------- MariaDB only


def test_mariadb_columns_are_sinas_innodb_and_case_sensitive(mariadb_engine):
    create_tables(mariadb_engine)
    with mariadb_engine.connect() as conn:
        tables = conn.exec_driver_sql(
            "SELECT table_name, engine, table_collation FROM information_schema.tables"
            " WHERE table_schema = DATABASE()").all()
        columns = conn.exec_driver_sql(
            "SELECT table_name, column_name, column_type, collation_name"
            " FROM information_schema.columns WHERE table_schema = DATABASE()"
            " ORDER BY table_name, ordinal_position").all()
    assert sorted(tables) == sorted((t, "InnoDB", MARIADB_COLLATION) for t in SINA_TABLES)

    def expected_type(column):
        compiled = column.type.compile(dialect=mysql.dialect()).lower()
        return {"real": "double", "integer": "int(11)",
                "text(16777216)": "longtext"}.get(compiled, compiled)

    expected = sorted((t.name, c.name, expected_type(c))
                      for t in sql_schema.Base.metadata.tables.values() for c in t.columns)
    assert sorted(row[:3] for row in columns) == expected
    assert {row[3] for row in columns} == {MARIADB_COLLATION, None}  # None: numbers


def test_mariadb_document_long_uris_case_and_duplicates(mariadb_engine):
    create_tables(mariadb_engine)
    long_uri = "/données/" + "é" * 1391  # 1,400 characters, 2,791 bytes
    widest = "𝄞" * sql_schema.LARGE_STRING_SIZE  # 1,500 four-byte characters
    assert len(long_uri) == 1400
    with mariadb_engine.begin() as conn:
        conn.execute(sa.insert(RECORD), [{"id": "r1", "type": "file"}, {"id": "r2", "type": "file"}])
        conn.execute(sa.insert(DOCUMENT), [
            {"id": "r1", "uri": long_uri}, {"id": "r1", "uri": widest},
            {"id": "r1", "uri": "a.h5"}, {"id": "r1", "uri": "A.h5"},
            {"id": "r1", "uri": "a.h5 "}, {"id": "r2", "uri": "a.h5"}])
    with mariadb_engine.connect() as conn:
        def ids(uri):
            return sorted(conn.execute(sa.select(DOCUMENT.c.id).where(DOCUMENT.c.uri == uri)).scalars())

        assert ids(long_uri) == ["r1"]
        assert ids(widest) == ["r1"]
        assert ids(long_uri.upper()) == []
        assert ids("a.h5") == ["r1", "r2"]
        assert ids("A.h5") == ["r1"]
        assert ids("a.h5 ") == ["r1"]
        plan = conn.exec_driver_sql("EXPLAIN SELECT id FROM Document WHERE uri = 'a.h5'").mappings().one()
        assert "uri_idx" in plan["possible_keys"]
    for uri in (long_uri, "A.h5"):
        with pytest.raises(sa.exc.IntegrityError), mariadb_engine.begin() as conn:
            conn.execute(sa.insert(DOCUMENT).values(id="r1", uri=uri))


def test_mariadb_relationship_primary_key_fits(mariadb_engine):
    create_tables(mariadb_engine)
    relationship = sql_schema.Relationship.__table__
    assert sa.inspect(mariadb_engine).get_pk_constraint("Relationship")["constrained_columns"] == \
        ["subject_id", "object_id", "predicate"]
    subject, obj, predicate = ("😀" * 254 + c for c in "SOP")  # 3 x 255 x 4 bytes = 3,060
    with mariadb_engine.begin() as conn:
        conn.execute(sa.insert(RECORD), [{"id": subject, "type": "t"}, {"id": obj, "type": "t"}])
        conn.execute(sa.insert(relationship).values(
            subject_id=subject, object_id=obj, predicate=predicate))
        conn.execute(sa.insert(relationship).values(
            subject_id=subject, object_id=obj, predicate=predicate.lower()))
    with pytest.raises(sa.exc.IntegrityError), mariadb_engine.begin() as conn:
        conn.execute(sa.insert(relationship).values(
            subject_id=subject, object_id=obj, predicate=predicate))
    with mariadb_engine.connect() as conn:
        found = conn.execute(sa.select(relationship.c.predicate)
                             .where(relationship.c.object_id == obj)).scalars().all()
    assert sorted(found) == sorted([predicate, predicate.lower()])
