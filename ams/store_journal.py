"""The store's deployment aliases and change feed: facade methods of :class:`ams.AMSDataStore`.

Like the rest of the facade, each method checks its arguments and makes one
catalogue call (:class:`ams.catalog.Catalog`); aliases and events live in
ams's own tables, written in the same locked transactions as the changes they
describe (see :mod:`ams.catalog.journal`).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from . import _validate
from .catalog import aliases
from .errors import NotFoundError

if TYPE_CHECKING:
    from .catalog import Catalog

LOGGER = logging.getLogger(__name__)


class StoreJournal:
    """Aliases (``set_alias``, ``get_alias``...) and the change feed (``changes``...)."""

    if TYPE_CHECKING:  # provided by the concrete class, ams.store.AMSDataStore
        _application_name: str

        def _require_open(self) -> Catalog: ...
        def _require_writable(self) -> Catalog: ...
        def get_files(self, domain_name: str, entry: str, versions: Any = None) -> List[str]: ...
        def get_candidate_versions(self, domain_name: str,
                                   associate_files: bool = False) -> Any: ...

    # ------------------------------------------------------------------ aliases
    def set_alias(self, domain_name: str, alias: str, version: Union[int, str],
                  entry_type: str = "models") -> Optional[int]:
        """Point the deployment alias ``alias`` (e.g. ``"champion"``) at an existing version.

        One write transaction under the store's write lock; every change is kept
        in the alias's history (:meth:`alias_history`). Returns the version it
        pointed at before, or None. Names: 1-64 letters, digits, ``_ - .``,
        starting with a letter; ``latest`` is reserved.

        >>> store.set_alias("EOS", "champion", 3) is None    # was not set before
        True
        >>> store.get_files("EOS", "models", "@champion") == store.get_files("EOS", "models", 3)
        True
        """
        catalog = self._require_writable()
        domain_name, entry_type, alias = self._alias_key(domain_name, entry_type, alias)
        version = self._one_version(domain_name, entry_type, _validate.single_version(version))
        previous = catalog.set_alias(self._application_name, domain_name, entry_type, alias,
                                     version, aliases.default_user())
        LOGGER.info("alias %s of %s/%s: %s -> %d", alias, domain_name, entry_type, previous,
                    version)
        return previous

    def remove_alias(self, domain_name: str, alias: str,
                     entry_type: str = "models") -> Optional[int]:
        """Unset ``alias`` (recorded in its history); returns the version it pointed at."""
        catalog = self._require_writable()
        domain_name, entry_type, alias = self._alias_key(domain_name, entry_type, alias)
        return catalog.remove_alias(self._application_name, domain_name, entry_type, alias,
                                    aliases.default_user())

    def get_alias(self, domain_name: str, alias: str, entry_type: str = "models",
                  at: Any = None) -> Optional[int]:
        """The version ``alias`` points at (None when unset); ``at`` (a ``datetime`` or an
        ISO-8601 string, naive = UTC): the version it pointed at then."""
        catalog = self._require_open()
        domain_name, entry_type, alias = self._alias_key(domain_name, entry_type, alias)
        return catalog.read_aliases(lambda conn: aliases.get_alias(
            conn, self._application_name, domain_name, entry_type, alias, at=at), None)

    def alias_history(self, domain_name: str, alias: str,
                      entry_type: str = "models") -> List[Dict[str, Any]]:
        """Every change of ``alias``, oldest first: ``{"version", "previous", "set_at", "set_by"}``."""
        catalog = self._require_open()
        domain_name, entry_type, alias = self._alias_key(domain_name, entry_type, alias)
        return catalog.read_aliases(lambda conn: aliases.history(
            conn, self._application_name, domain_name, entry_type, alias), [])

    def aliases(self, domain_name: str, entry_type: str = "models") -> Dict[str, int]:
        """The aliases set on ``entry_type`` of ``domain_name``: ``{alias: version}``."""
        catalog = self._require_open()
        domain_name = _validate.name(domain_name, "domain_name")
        entry_type = _validate.entry_type(entry_type)
        return catalog.read_aliases(lambda conn: aliases.current(
            conn, self._application_name, domain_name, entry_type), {})

    def _one_version(self, domain_name: str, entry_type: str, version: Union[int, str]) -> int:
        """``"latest"`` or ``"@other"`` as the version it means now (NotFoundError when none)."""
        if isinstance(version, int):
            return version
        versions = self._require_open().versions(self._application_name, domain_name, entry_type)
        if version == "latest":
            if not versions:
                raise NotFoundError(f"no {entry_type} versions in domain {domain_name!r}")
            return versions[-1]
        target = self.get_alias(domain_name, version[1:], entry_type)
        if target is None:
            raise NotFoundError(f"alias {version[1:]!r} is not set on {entry_type} of domain "
                                f"{domain_name!r}")
        return target

    @staticmethod
    def _alias_key(domain_name: Any, entry_type: Any, alias: Any) -> Tuple[str, str, str]:
        return (_validate.name(domain_name, "domain_name"), _validate.entry_type(entry_type),
                aliases.check_alias_name(alias))

    # ------------------------------------------------------------------ change feed
    def changes(self, after: int = 0, limit: int = 1000, domain_name: Optional[str] = None,
                entry_type: Optional[str] = None,
                action: Optional[str] = None) -> List[Dict[str, Any]]:
        """The application's committed changes with ``id > after``, in commit order.

        Each event is ``{"id", "time", "application_name", "domain_name",
        "entry_type", "action", "version", "files", "count", "bytes"}`` (plus
        ``to_entry_type``/``to_version`` for moves, ``alias``/``previous`` for
        alias changes). Every write appends its events in its own transaction,
        under the store's write lock, so ids increase in commit order and a
        reader polling ``changes(after=last_id)`` never misses one.

        >>> last_seen = 0
        >>> for event in store.changes(after=last_seen):
        ...     last_seen = event["id"]
        >>> store.changes(after=last_seen)
        []
        """
        catalog = self._require_open()
        arguments = _validate.changes_arguments(after, limit, domain_name, entry_type, action)
        return catalog.changes(self._application_name, **arguments)

    def prune_changes(self, before_id: int) -> int:
        """Delete the application's events with ``id < before_id`` (retention); how many.

        Never deletes an event a relay (:func:`ams.events.publish`) has not sent.
        """
        catalog = self._require_writable()
        before_id = _validate.event_id(before_id, "before_id")
        return catalog.prune_changes(self._application_name, before_id)

    def relay_cursor(self, relay: str) -> int:
        """The id of the last event the relay ``relay`` had confirmed by its broker (0: none)."""
        catalog = self._require_open()
        return catalog.relay_cursor(self._application_name, _validate.name(relay, "relay"))

    def advance_relay(self, relay: str, last_id: int) -> None:
        """Record that the relay ``relay`` had every event up to ``last_id`` confirmed."""
        catalog = self._require_writable()
        catalog.advance_relay(self._application_name, _validate.name(relay, "relay"),
                              _validate.event_id(last_id, "last_id"))

    def pending_bytes(self, domain_name: str,
                      since_version: Optional[int] = None) -> Dict[str, Any]:
        """Candidates added after ``since_version`` (all when None): ``{"files", "bytes",
        "versions"}`` with their sizes on disk now (the orchestrator's "untrained data")."""
        since = None if since_version is None else _validate.version(since_version,
                                                                      "since_version")
        versions = [v for v in self.get_candidate_versions(domain_name)
                    if since is None or v > since]
        files = self.get_files(domain_name, "candidates", versions) if versions else []
        return {"files": len(files), "bytes": sum(_size(path) for path in files),
                "versions": versions}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
