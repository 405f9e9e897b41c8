"""The catalogue's journal beside Kosh's records: deployment aliases and the change feed.

Both live in ams's own tables (:mod:`ams.catalog.aliases`,
:mod:`ams.catalog.feed`), written in the same locked transactions as the
changes they describe, so plain Kosh sees the same layout.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from sqlalchemy.engine import Connection

from ..errors import NotFoundError
from . import aliases, reads
from .base import CatalogBase

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
            return aliases.set_alias(conn, application_name, domain_name, entry_type, alias,
                                     version, user)
        return self._write("alias", work)

    def remove_alias(self, application_name: str, domain_name: str, entry_type: str,
                     alias: str, user: str) -> Optional[int]:
        return self._write("alias", lambda conn: aliases.remove_alias(
            conn, application_name, domain_name, entry_type, alias, user))

    def read_aliases(self, read: Callable[[Connection], Any], default: Any) -> Any:
        """Run ``read(conn)`` on the alias table; ``default`` for a store that has none yet."""
        with self._transactions().read() as conn:
            if not self.has_table(conn, aliases.TABLE_NAME):
                return default
            return read(conn)

