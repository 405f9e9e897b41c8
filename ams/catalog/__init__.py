"""The catalogue: the only code that knows Kosh's and Sina's tables.

    catalog.py       the operations (add, remove, entries, versions...): one door, Catalog
    base.py          opening a store, transactions, the store's kinds (CatalogBase)
    file_effects.py  moves that copy files, purges, what killed calls left (FileEffects)
    journal.py       deployment aliases and the change feed (Journal)
    aliases.py       the alias history table
    feed.py          the change-feed tables
    transactions.py  engines, fork safety, read snapshots, the write lock, retries, errors
    reads.py         queries over ensembles, datasets and file records; "latest"
    writes.py        bulk add and remove of Kosh records; version high-water marks
    records.py       Kosh's record JSON and bootstrap records
    sql.py           driver-level statements and bulk inserts
    mysql.py         MariaDB literals and multi-row INSERTs
    schema.py        table DDL: Sina's tables and ams's own
    filesystems.py   refusing SQLite on network filesystems
"""

from .catalog import Catalog
from .file_effects import RemoveOutcome, Unfinished
from .records import NewFile, now_string
from .transactions import CONNECT_TIMEOUT_SECONDS

__all__ = ["Catalog", "RemoveOutcome", "Unfinished", "NewFile", "now_string",
           "CONNECT_TIMEOUT_SECONDS"]
