"""The catalogue's journal beside Kosh's records: deployment aliases and the change feed.

Both live in ams's own tables (:mod:`ams.catalog.aliases`,
:mod:`ams.catalog.feed`), written in the same locked transactions as the
changes they describe, so plain Kosh sees the same layout.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from sqlalchemy.engine import Connection

from ..errors import AliasError, NotFoundError
from . import aliases, feed, reads
from .base import CatalogBase
from .records import FileRecord

LOGGER = logging.getLogger(__name__)


class Journal(CatalogBase):
    """Aliases and change events; see the module docstring."""

    def set_alias(self, application_name: str, domain_name: str, entry_type: str, alias: str,
                  version: int, user: str) -> Optional[int]:
        """Point ``alias`` at an existing ``version`` in one locked transaction; the previous one."""
        def work(conn: Connection) -> Optional[int]:
            existing = sorted({d.version for d in reads.entry_datasets(
                conn, self.kinds, application_name, [domain_name], [entry_type])})
            if version not in existing:
                raise NotFoundError(
                    f"no {entry_type} version {version} in domain {domain_name!r} to point "
                    f"alias {alias!r} at (existing: {', '.join(map(str, existing)) or 'none'})",
                    versions=existing)
            previous = aliases.set_alias(conn, application_name, domain_name, entry_type, alias,
                                         version, user)
            self.record_events(conn, [alias_event(application_name, domain_name, entry_type,
                                                  alias, version, previous)])
            return previous
        return self._write("alias", work)

    def remove_alias(self, application_name: str, domain_name: str, entry_type: str,
                     alias: str, user: str) -> Optional[int]:
        def work(conn: Connection) -> Optional[int]:
            previous = aliases.remove_alias(conn, application_name, domain_name, entry_type,
                                            alias, user)
            self.record_events(conn, [alias_event(application_name, domain_name, entry_type,
                                                  alias, None, previous)])
            return previous
        return self._write("alias", work)

    def read_aliases(self, read: Callable[[Connection], Any], default: Any) -> Any:
        """Run ``read(conn)`` on the alias table; ``default`` for a store that has none yet."""
        with self._transactions().read() as conn:
            if not self.has_table(conn, aliases.TABLE_NAME):
                return default
            return read(conn)


    def aliases_on(self, conn: Connection, application_name: str,
                   records: Sequence[FileRecord]) -> Dict[Tuple[str, str], Dict[str, int]]:
        """(domain, entry) -> {alias: version} of the aliases on the versions of ``records``."""
        if not records or not self.has_table(conn, aliases.TABLE_NAME):
            return {}
        by_entry: Dict[Tuple[str, str], Set[int]] = defaultdict(set)
        for record in records:
            by_entry[(record.dataset.ensemble.domain_name, record.dataset.entry_type)].add(
                record.dataset.version)
        out = {}
        for (domain_name, entry_type), versions in by_entry.items():
            hit = aliases.pointing_at(conn, application_name, domain_name, entry_type, versions)
            if hit:
                out[(domain_name, entry_type)] = hit
        return out

    def guard_aliases(self, conn: Connection, application_name: str,
                      records: Sequence[FileRecord], force: bool, doing: str) -> None:
        """Refuse to touch versions that deployment aliases point to, or (``force``) unset them."""
        held = self.aliases_on(conn, application_name, records)
        if not held:
            return
        if not force:
            named = "; ".join(f"{domain}/{entry}: " + ", ".join(
                f"{alias!r} -> version {version}" for alias, version in sorted(hit.items()))
                for (domain, entry), hit in sorted(held.items()))
            raise AliasError(f"refusing to {doing} versions that deployment aliases point to "
                             f"({named}); move or remove those aliases first, or pass "
                             "force=True to remove them too",
                             aliases=sorted({a for hit in held.values() for a in hit}))
        user = aliases.default_user()
        for (domain_name, entry_type), hit in held.items():
            previous = aliases.forget(conn, application_name, domain_name, entry_type, hit, user)
            self.record_events(conn, [alias_event(application_name, domain_name, entry_type,
                                                  alias, None, before)
                                      for alias, before in previous.items()])

    # ------------------------------------------------------------------ change feed
    def record_events(self, conn: Connection, events: List[Dict[str, Any]]) -> None:
        """Append ``events`` to the change feed in the caller's write transaction."""
        if events and self.has_table(conn, feed.CHANGE.name):
            feed.record(conn, events)

    def changes(self, application_name: str, **arguments: Any) -> List[Dict[str, Any]]:
        """Events of the application after ``after``, in commit order (see :func:`feed.read`)."""
        with self._transactions().read() as conn:
            if not self.has_table(conn, feed.CHANGE.name):
                return []
            return feed.read(conn, application_name, **arguments)

    def relay_cursor(self, application_name: str, relay: str) -> int:
        with self._transactions().read() as conn:
            if not self.has_table(conn, feed.RELAY.name):
                return 0
            return feed.relay_cursor(conn, application_name, relay)

    def advance_relay(self, application_name: str, relay: str, last_id: int) -> None:
        self._write("relay", lambda conn: feed.advance_relay(conn, application_name, relay,
                                                             last_id))

    def prune_changes(self, application_name: str, before_id: int) -> int:
        return int(self._write("prune", lambda conn: feed.prune(conn, application_name,
                                                                before_id)))


def file_events(application_name: str, action: str, records: Iterable[FileRecord],
                sizes: Optional[Dict[str, int]] = None, **extras: Any) -> List[Dict[str, Any]]:
    """One event per domain, entry and version of ``records`` (``sizes``: path -> bytes)."""
    groups: Dict[Tuple[str, str, int], List[str]] = defaultdict(list)
    for record in records:
        dataset = record.dataset
        groups[(dataset.ensemble.domain_name, dataset.entry_type, dataset.version)].append(
            record.path)
    return [{"application_name": application_name, "domain_name": domain,
             "entry_type": entry_type, "action": action, "version": version,
             "files": sorted(paths),
             "bytes": sum((sizes or {}).get(path, 0) for path in paths), **extras}
            for (domain, entry_type, version), paths in sorted(groups.items())]


def alias_event(application_name: str, domain_name: str, entry_type: str, alias: str,
                version: Optional[int], previous: Optional[int]) -> Dict[str, Any]:
    return {"application_name": application_name, "domain_name": domain_name,
            "entry_type": entry_type, "action": "alias", "version": version, "files": [],
            "bytes": 0, "alias": alias, "previous": previous}
