#!/usr/bin/env python3
"""Benchmark the change feed and the RabbitMQ relay, on SQLite and MariaDB.

For each backend, in a fresh database:

* the cost of one event: ``--transactions`` write transactions under the
  store's write lock (SQLite ``BEGIN IMMEDIATE``; MariaDB ``SELECT ... FOR
  UPDATE``), each inserting one row of its own and committing, with and
  without one ``feed.append`` of a single-file event; and the time of the
  ``append`` call alone (medians);
* the relay: ``--events`` events appended, then ``ams.events.publish(...,
  once=True)`` to a durable topic exchange with one durable queue bound,
  persistent messages and publisher confirms; events per second.

The source is the tests' stand-in for the store (``tests/feed_source.py``).

Run::

    python scripts/bench_feed.py --backends sqlite mariadb --events 10000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid

import sqlalchemy as sa

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tests")]

from ams import events
from ams.catalog import feed

from feed_source import FeedSource, event


def mariadb_database(server: str) -> str:
    import mysql.connector
    name = f"ams_bench_{uuid.uuid4().hex[:10]}"
    conn = mysql.connector.connect(user="root", host=server.split(":")[0],
                                   port=int(server.split(":")[1]))
    conn.cursor().execute(f"CREATE DATABASE `{name}`")
    conn.close()
    return name


def drop_mariadb(server: str, name: str) -> None:
    import mysql.connector
    conn = mysql.connector.connect(user="root", host=server.split(":")[0],
                                   port=int(server.split(":")[1]))
    conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


SCRATCH = sa.Table("bench_write", sa.MetaData(),
                   sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                   sa.Column("path", sa.String(255)), mysql_engine="InnoDB")


def cost_of_one_event(source: FeedSource, transactions: int) -> dict:
    """A write transaction that inserts one row (the store's own write), with and without its event."""
    SCRATCH.create(source.engine, checkfirst=True)
    row = {"path": "/data/run/candidate_000001.h5"}
    one = [event(files=[row["path"]], nbytes=4096)]
    without, with_event, append_only = [], [], []
    for _ in range(transactions):
        start = time.perf_counter()
        with source.write() as conn:
            conn.execute(SCRATCH.insert(), row)
        without.append(time.perf_counter() - start)
        start = time.perf_counter()
        with source.write() as conn:
            conn.execute(SCRATCH.insert(), row)
            before = time.perf_counter()
            feed.append(conn, one)
            append_only.append(time.perf_counter() - before)
        with_event.append(time.perf_counter() - start)
    ms = lambda values: round(statistics.median(values) * 1000, 3)
    return {"write ms": ms(without), "write + event ms": ms(with_event),
            "append call ms": ms(append_only)}


def relay_rate(source: FeedSource, amqp_url: str, count: int, batch: int) -> dict:
    import pika
    earlier = source.changes(limit=100_000)
    if earlier:  # only the new events are the relay's work
        source.advance_relay("bench", earlier[-1]["id"])
    for start in range(0, count, 1000):
        source.append([event(version=start + i, files=[f"/data/run/candidate_{start + i:06d}.h5"],
                             nbytes=4096) for i in range(min(1000, count - start))])
    exchange = f"ams.bench.{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    channel.queue_declare(exchange, durable=True)
    channel.queue_bind(exchange, exchange, "#")
    try:
        start = time.perf_counter()
        published = events.publish(source, amqp_url, exchange=exchange, relay="bench", once=True,
                                   batch=batch)
        elapsed = time.perf_counter() - start
        queued = channel.queue_declare(exchange, passive=True).method.message_count
    finally:
        channel.queue_delete(exchange)
        channel.exchange_delete(exchange)
        connection.close()
    assert published == count == queued, (published, count, queued)
    return {"events": published, "seconds": round(elapsed, 2), "events/s": round(published / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "mariadb"])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--mariadb", default="127.0.0.1:3306", help="host:port, user root")
    args = parser.parse_args()
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as folder:
            database = None
            if backend == "sqlite":
                url = f"sqlite:///{folder}/feed.db"
            else:
                database = mariadb_database(args.mariadb)
                url = f"mariadb://root@{args.mariadb}/{database}"
            source = FeedSource(url)
            try:
                source.create()
                print(backend, cost_of_one_event(source, args.transactions), flush=True)
                print(backend, relay_rate(source, args.amqp, args.events, args.batch), flush=True)
            finally:
                source.close()
                if database:
                    drop_mariadb(args.mariadb, database)


if __name__ == "__main__":
    main()
