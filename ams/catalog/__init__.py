"""The catalogue: the only code that knows Kosh's and Sina's tables.

    catalog.py       the operations (add, remove, move, entries, versions...): one door
    transactions.py  engines, fork safety, read snapshots, the write lock, retries, errors
    reads.py         queries over ensembles, datasets and file records; "latest"
    writes.py        bulk add and remove of Kosh records; version high-water marks
    records.py       Kosh's record JSON and bootstrap records
    sql.py           driver-level statements and bulk inserts
    mysql.py         MariaDB literals and multi-row INSERTs
    schema.py        table DDL: Sina's tables and ams's own
    filesystems.py   refusing SQLite on network filesystems
"""

from .catalog import Catalog, RemoveOutcome, Unfinished
from .records import NewFile, now_string
from .transactions import CONNECT_TIMEOUT_SECONDS

__all__ = ["Catalog", "RemoveOutcome", "Unfinished", "NewFile", "now_string",
           "CONNECT_TIMEOUT_SECONDS"]
