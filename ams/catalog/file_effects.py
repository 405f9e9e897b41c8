"""File effects of the catalogue: moves that copy files, purges, and what killed calls left.

A user's file follows the transaction: copies are announced (intents, in the
table ``ams_file_intent``) before the first byte is copied, placed without
replacing anything (:class:`ams.files.Placement`), registered in one
transaction, and undone exactly if that transaction fails; purges are recorded
in the removal's transaction and carried out after the commit under the write
lock, re-checked there (:func:`ams.files.purge`). :meth:`FileEffects.unfinished`
tells what a killed call left, :meth:`FileEffects.finish_unfinished` ends it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import files as disk
from ..errors import NotFoundError
from . import reads, schema, writes
from .journal import Journal, file_events
from .records import NewFile, now_string

LOGGER = logging.getLogger(__name__)


@dataclass
class RemoveOutcome:
    """What a removal did: paths removed, still referenced elsewhere, purged, and purge failures."""

    removed: List[str] = field(default_factory=list)
    still_referenced: Set[str] = field(default_factory=set)
    purged: List[str] = field(default_factory=list)
    purge_errors: Dict[str, str] = field(default_factory=dict)


@dataclass
class Unfinished:
    """File operations a killed call left: copies of a move, purges (see :meth:`Catalog.unfinished`)."""

    stray_copies: List[str] = field(default_factory=list)
    unpurged: List[str] = field(default_factory=list)


class FileEffects(Journal):
    """Moves, purges and their clean-up; see the module docstring."""

    def _intend_purges(self, conn: Connection, application_name: str, tag: str,
                       result: writes.RemoveResult) -> None:
        now = time.time()
        rows = [{"id": f"{tag}-{index}", "operation": "purge",
                 "application_name": application_name, "path": record.path, "source": None,
                 "fast_sha": record.fast_sha, "created": now}
                for index, record in enumerate(result.removed)
                if record.path not in result.still_referenced]
        if rows:
            conn.execute(_intent_table(conn).insert(), rows)

    def _purge(self, application_name: str, tag: Optional[str], outcome: RemoveOutcome) -> None:
        """Delete the files of pending purge intents (``tag``'s, or all), under the write lock.

        Each path is re-checked there: still registered (added again since) ->
        kept; no longer the registered file (folder replaced by a symlink, content
        changed) -> reported in ``purge_errors``. A failure on one file does not
        stop the others. The intents are dropped in the same transaction.
        """
        def work(conn: Connection) -> None:
            table = _intent_table(conn)
            query = sa.select(table.c.id, table.c.path, table.c.fast_sha).where(
                table.c.operation == "purge", table.c.application_name == application_name)
            if tag is not None:
                query = query.where(table.c.id.like(f"{tag}-%"))
            intents = conn.execute(query).all()
            taken = reads.locate(conn, self.kinds, [path for _id, path, _sha in intents])
            for _id, path, registered_sha in intents:
                if path in taken:
                    outcome.still_referenced.add(path)
                    continue
                problem = disk.purge(path, registered_sha)
                if problem is None:
                    if path not in outcome.purged:
                        outcome.purged.append(path)
                elif problem == disk.GONE:
                    LOGGER.debug("purge: %s was already gone", path)
                else:
                    outcome.purge_errors[path] = problem
                    LOGGER.error("purge: not deleting %s: %s", path, problem)
            if intents:
                conn.execute(table.delete().where(table.c.id.in_([i[0] for i in intents])))
        self._write("purge", work)
        outcome.purged.sort()

    def move(self, application_name: str, domain_name: str, src_type: str, dest_type: str,
             mime_type: str, moves: Sequence[Tuple[str, str]], version: Optional[int],
             copy: bool = True, make_folder: Optional[str] = None, force: bool = False,
             ) -> Tuple[int, RemoveOutcome]:
        """Move registered files of ``src_type`` to ``dest_type`` (one new version unless given).

        ``moves``: (source, destination) paths. With ``copy``: copy intents are
        recorded first (so that :meth:`unfinished` explains a killed move), each
        copy is placed without replacing anything (:class:`ams.files.Placement`),
        then ONE transaction registers the copies with the sources' metadata,
        removes the sources and records their purges; a failure before that commit
        removes exactly the copies and folders this call made. After the commit the
        sources are purged under the write lock. Without ``copy``: one transaction
        re-files the same paths; nothing on disk is touched. Moving away versions
        that deployment aliases point to is refused unless ``force`` (which removes
        those aliases). One "move" event per source version, naming the new paths.
        """
        tag = uuid.uuid4().hex
        placement = disk.Placement(tag=tag)
        sizes: Dict[str, int] = {}
        date = now_string()
        if copy:
            self._record_copy_intents(application_name, tag, moves)
        try:
            if copy:
                if make_folder is not None:
                    placement.make_folders(make_folder)
                for source, target in moves:
                    placement.copy(source, target)
                    self._hook("after_copy")
            sizes.update((target, _size(target)) for _source, target in moves)

            def work(conn: Connection) -> Tuple[int, writes.RemoveResult]:
                sources = self._entry_records(conn, application_name, domain_name, src_type,
                                              None, [src for src, _ in moves])
                by_path = {r.path: r for r in sources}
                missing = [src for src, _ in moves if src not in by_path]
                if missing:
                    raise NotFoundError(f"not registered as {src_type} of domain {domain_name!r}: "
                                        + ", ".join(map(repr, missing)), paths=missing)
                leaving = [by_path[src] for src, _ in moves]
                self.guard_aliases(conn, application_name, leaving, force, "move away")
                removed = writes.remove(conn, self.kinds, leaving)
                copies = [NewFile(target, {**by_path[src].metadata, "date": date},
                                  by_path[src].fast_sha or disk.fast_sha(target))
                          for src, target in moves]
                new_version = writes.add(conn, self._context_(), application_name, domain_name,
                                         dest_type, mime_type, copies, version)
                target_of = dict(moves)
                for event in file_events(application_name, "move", leaving,
                                         to_entry_type=dest_type, to_version=new_version):
                    event["files"] = sorted(target_of[path] for path in event["files"])
                    event["bytes"] = sum(sizes[path] for path in event["files"])
                    self.record_events(conn, [event])
                if copy:
                    self._drop_intents(conn, tag)
                    removed.still_referenced = set(reads.locate(
                        conn, self.kinds, [src for src, _ in moves]))
                    self._intend_purges(conn, application_name, tag, removed)
                self._hook("before_commit")
                return new_version, removed
            new_version, result = self._write("move", work)
        except BaseException:
            left = placement.undo()
            try:
                self._write("move", lambda conn: self._drop_intents(conn, tag))
            except Exception as error:  # noqa: BLE001 - verify reports what is left
                LOGGER.error("move: could not drop the copy intents of %s: %s", tag, error)
            if left:
                LOGGER.error("move: could not remove %d copy(ies): %s", len(left), ", ".join(left))
            raise
        # Committed: from here on the copies are registered and never removed.
        outcome = RemoveOutcome(removed=sorted(r.path for r in result.removed),
                                still_referenced=result.still_referenced)
        if copy:
            self._hook("before_purge")
            self._purge(application_name, tag, outcome)
        return new_version, outcome

    def _record_copy_intents(self, application_name: str, tag: str,
                             moves: Sequence[Tuple[str, str]]) -> None:
        now = time.time()
        rows = [{"id": f"{tag}-{index}", "operation": "copy",
                 "application_name": application_name, "path": target, "source": source,
                 "fast_sha": None, "created": now}
                for index, (source, target) in enumerate(moves)]
        self._write("move", lambda conn: conn.execute(_intent_table(conn).insert(), rows))

    @staticmethod
    def _drop_intents(conn: Connection, tag: str) -> None:
        table = _intent_table(conn)
        conn.execute(table.delete().where(table.c.id.like(f"{tag}-%")))

    def unfinished(self, application_name: str) -> Unfinished:
        """What killed moves and purges of the application left on disk."""
        with self._transactions().read() as conn:
            if not self._has_intents(conn):
                return Unfinished()
            table = _intent_table(conn)
            intents = conn.execute(sa.select(table.c.id, table.c.operation, table.c.path).where(
                table.c.application_name == application_name)).all()
            taken = reads.locate(conn, self.kinds, [path for _id, _op, path in intents])
        out = Unfinished()
        for intent_id, operation, path in intents:
            if operation == "copy":  # a partial copy under its temporary name, too
                partial = disk.Placement(tag=intent_id.rsplit("-", 1)[0]).temporary_name(path)
                if os.path.lexists(partial):
                    out.stray_copies.append(partial)
            if path in taken or not os.path.lexists(path):
                continue
            (out.stray_copies if operation == "copy" else out.unpurged).append(path)
        out.stray_copies.sort()
        out.unpurged.sort()
        return out

    def finish_unfinished(self, application_name: str) -> Tuple[List[str], RemoveOutcome]:
        """Undo killed moves (remove their unregistered copies) and finish killed purges."""
        removed: List[str] = []

        def undo_copies(conn: Connection) -> None:
            table = _intent_table(conn)
            intents = conn.execute(sa.select(table.c.id, table.c.path).where(
                table.c.operation == "copy", table.c.application_name == application_name)).all()
            taken = reads.locate(conn, self.kinds, [path for _id, path in intents])
            for intent_id, path in intents:
                tag = intent_id.rsplit("-", 1)[0]
                removed.extend(disk.remove_temporary_copies(os.path.dirname(path), tag))
                if path not in taken and os.path.lexists(path):
                    problem = disk.purge(path, None)
                    if problem in (None, disk.GONE):
                        removed.append(path)
                    else:
                        LOGGER.error("verify: could not remove the stray copy %s: %s", path,
                                     problem)
            if intents:
                conn.execute(table.delete().where(table.c.id.in_([i[0] for i in intents])))
        self._write("repair", undo_copies)
        outcome = RemoveOutcome()
        self._purge(application_name, None, outcome)
        return sorted(removed), outcome

    def _has_intents(self, conn: Connection) -> bool:
        if schema.FILE_INTENT not in self._tables:
            self._tables[schema.FILE_INTENT] = sa.inspect(conn).has_table(schema.FILE_INTENT)
        return self._tables[schema.FILE_INTENT]


def _intent_table(conn: Connection) -> sa.Table:
    return schema._own_schema(mariadb=conn.dialect.name != "sqlite").tables[schema.FILE_INTENT]




def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
