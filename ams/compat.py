"""Both eras of the upstream AMS store API, in one place.

The reference (SQL-table era) form is ``AMSDataStore(application_name, url)``.
The original Kosh backend was built as ``AMSDataStore(store_path, store_name,
name, delete_all_contents=False)``: a folder holding the Kosh (SQLite) file
``store_name``, the folders ``data/``, ``candidates/``, ``models/`` and an
``ams_config.json``. Scripts of both eras call this package unchanged:

* :class:`StoreCompat`, a base class of :class:`ams.store.AMSDataStore`, gives
  both forms what either era's callers use: ``root_path``, ``store_path``,
  ``get_candidate_path()``, ``get_data_path()``, ``get_model_path()``,
  ``suggest_*_file_name`` under the store's folders, ``_add_entry``,
  ``_remove_entry_file``, ``get_raw_content`` and ``deployment_config``.
  Its ``__new__`` sends a call with the original's arguments to
  :class:`KoshEraStore` (rule: :func:`is_original_call`).
* :class:`KoshEraStore` is mixed in front of ``AMSDataStore`` for the
  original's form (the class ``ams.compat.KoshEraAMSDataStore``) and keeps the
  original's behaviour where the eras disagree: ``remove_*``'s third
  positional argument is ``delete_files`` (default False), ``move(domain, src,
  dest, files)`` copies into the store's folder of ``dest``, and ``search``
  returns flat entries (:class:`~ams.store_types.FlatEntryDict`), a single one
  for ``version="latest"``.
* :func:`remove_aliases` decorates the reference form's ``remove_*`` so that
  the original's keywords (``data_files=``, ``model=``, ``delete_files=``)
  work there too.

Differences that remain, on purpose: files are checked (a data or candidate
file must be HDF5, a model TorchScript) and a path is registered once; None
is not a metadata value; auto versions start at 1 (a store written by the
original keeps its numbering, from 0); metadata keeps its types (the original
stringified model metadata).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Union, cast

from . import _validate
from .errors import InvalidArgumentError, InvalidArgumentTypeError
from .importer import CONFIG_NAME, DEFAULT_STORE_NAME
from .keys import MODEL_FIELDS
from .store_types import EntryDict, FlatEntryDict

if TYPE_CHECKING:
    from .store import AMSDataStore
    from .url import StoreURL

    _KoshEraBase = AMSDataStore
else:
    _KoshEraBase = object

__all__ = ["CONFIG_NAME", "DEFAULT_STORE_NAME", "STORE_FOLDERS", "StoreCompat", "KoshEraStore",
           "create_store_directories", "store_config", "write_store_config", "is_original_call",
           "remove_aliases", "kosh_era_class"]

LOGGER = logging.getLogger(__name__)

#: The folders of a store's root, one per entry type (named as the entry).
STORE_FOLDERS = ("data", "candidates", "models")
#: The data format the original's config named (``AMSInstance.create_config``).
CONFIG_DB_TYPE = "dhdf5"
#: Keywords only the original's constructor has.
ORIGINAL_KEYWORDS = frozenset({"store_path", "store_name", "name", "delete_all_contents"})

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- folders, config
def create_store_directories(store_path: PathLike) -> Path:
    """Make ``store_path`` and its ``data/``, ``candidates/``, ``models/`` folders; returns it.

    As the original's ``ams.store.create_store_directories`` (existing
    folders are kept).
    """
    root = Path(_validate.absolute_path(store_path, "store_path"))
    for folder in STORE_FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    return root


def store_config(store_path: PathLike, store_name: PathLike, name: str) -> Dict[str, Any]:
    """The ``ams_config.json`` content the original wrote (``AMSInstance.create_config``).

    ``{"name": name, "ams_persistent_db": {"path": store_path, "type": "dhdf5",
    "store": store_name}}``; ``path`` is written absolute (the original wrote
    it as given, which broke readers started from another folder).
    """
    return {"name": name, "ams_persistent_db": {
        "path": _validate.absolute_path(store_path, "store_path"), "type": CONFIG_DB_TYPE,
        "store": os.fspath(store_name)}}


def write_store_config(store_path: PathLike, store_name: PathLike, name: str) -> Path:
    """Write ``store_path/ams_config.json`` unless it exists (as the original did); returns its path."""
    path = Path(_validate.absolute_path(store_path, "store_path")) / CONFIG_NAME
    if not path.exists():
        text = json.dumps(store_config(store_path, store_name, name), indent=6)
        temporary = path.with_name(f".{CONFIG_NAME}.{os.getpid()}.tmp")
        temporary.write_text(text, encoding="utf-8")
        try:  # never replace a config another process wrote meanwhile
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path


# --------------------------------------------------------------------------- dispatch
def is_original_call(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether ``AMSDataStore(*args, **kwargs)`` is the original's constructor.

    The original is ``(store_path, store_name, name, delete_all_contents=False)``,
    the reference ``(application_name, url, read_only=False)``. So: any of the
    original's own keywords (``store_path``, ``store_name``, ``name``,
    ``delete_all_contents``), or four positional arguments, or three whose
    third is not a bool (the reference's third is ``read_only``, the
    original's third the application name).
    """
    if ORIGINAL_KEYWORDS & set(kwargs):
        return True
    if len(args) >= 4:
        return True
    return len(args) == 3 and not isinstance(args[2], bool)


_ERA_CLASSES: Dict[type, type] = {}


def kosh_era_class(base: Optional[type] = None) -> type:
    """The class of stores built with the original's arguments: ``KoshEraStore`` + ``base``.

    ``base`` defaults to :class:`ams.store.AMSDataStore`
    (``ams.compat.KoshEraAMSDataStore``); a subclass of it gets its own
    era class, so ``MyStore(path, "x.sql", "app")`` is still a ``MyStore``.
    """
    if base is None:
        from .store import AMSDataStore
        base = AMSDataStore
    era = _ERA_CLASSES.get(base)
    if era is None:
        name = f"KoshEra{base.__name__}"
        era = type(name, (KoshEraStore, base), {"__module__": __name__, "__qualname__": name,
                                               "__doc__": KoshEraStore.__doc__})
        _ERA_CLASSES[base] = era
    return era


def __getattr__(name: str) -> Any:
    if name == "KoshEraAMSDataStore":  # built on first use: ams.store imports this module
        return kosh_era_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- remove keywords
def remove_aliases(files_parameter: str, *aliases: str) -> Callable[[Callable], Callable]:
    """Let a reference-form ``remove_*`` take the original's keywords too.

    ``aliases`` (``data_files``; ``model``) name the files parameter
    ``files_parameter``; ``delete_files=`` is ``purge=``. A bool as third
    positional argument (the original's ``delete_files``) is the reference's
    ``version``: that is refused with a hint, never read as a version.
    """
    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self, *args: Any, **kwargs: Any) -> Any:
            given = [alias for alias in aliases if alias in kwargs]
            if given:
                if len(given) > 1 or files_parameter in kwargs or len(args) >= 2:
                    raise InvalidArgumentError(
                        f"{method.__name__}: give the files once, as {files_parameter} or "
                        f"{' or '.join(aliases)}")
                kwargs[files_parameter] = kwargs.pop(given[0])
            if "delete_files" in kwargs:
                if "purge" in kwargs:
                    raise InvalidArgumentError(f"{method.__name__}: give purge or delete_files, "
                                               "not both")
                kwargs["purge"] = _validate.boolean(kwargs.pop("delete_files"), "delete_files")
            if len(args) >= 3 and isinstance(args[2], bool):
                raise InvalidArgumentTypeError(
                    f"{method.__name__}: the third argument is the version, not {args[2]!r}; "
                    f"for the original backend's delete_files write delete_files={args[2]!r} "
                    "(or purge=)")
            return method(self, *args, **kwargs)

        signature = inspect.signature(method)
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
                 for name in (*aliases, "delete_files") if name not in signature.parameters]
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*signature.parameters.values(), *extra])
        return wrapper

    return decorate


# --------------------------------------------------------------------------- both forms
class StoreCompat:
    """What both eras' callers use, on every ``AMSDataStore`` (a base class of it).

    Needs of the concrete class: ``url``, ``find``, ``_add_entries``,
    ``_remove_entries``, ``_suggest_entry_file_name``, ``entry_mime_types``,
    ``valid_entries``.
    """

    if TYPE_CHECKING:  # provided by the concrete class, ams.store.AMSDataStore
        entry_mime_types: Dict[str, str]
        valid_entries: Set[str]
        find: Callable[..., Any]
        _add_entries: Callable[..., int]
        _remove_entries: Callable[..., Any]
        _suggest_entry_file_name: Callable[..., str]

        @property
        def url(self) -> StoreURL: ...

    def __new__(cls, *args: Any, **kwargs: Any):
        if not issubclass(cls, KoshEraStore) and is_original_call(args, kwargs):
            cls = kosh_era_class(cls)
        return super().__new__(cls)

    def _init_root_path(self, root_path: Optional[PathLike]) -> None:
        """Called by ``__init__``: the folder holding ``data/``, ``candidates/``, ``models/``."""
        self._root_path_given = (None if root_path is None
                                 else Path(_validate.absolute_path(root_path, "root_path")))

    # ------------------------------------------------------------------ paths
    @property
    def root_path(self) -> Optional[Path]:
        """The store's folder: ``root_path=`` if given, else the SQLite file's folder.

        None for a MariaDB store built without ``root_path=``. For the
        original's form, its ``store_path`` argument.
        """
        given = getattr(self, "_root_path_given", None)
        if given is not None:
            return given
        if self.url.backend == "sqlite":
            return Path(os.path.realpath(os.path.dirname(cast(str, self.url.path))))
        return None

    @property
    def store_path(self) -> Optional[Path]:
        """The SQLite (Kosh) file of the store; None on MariaDB."""
        return Path(cast(str, self.url.path)) if self.url.backend == "sqlite" else None

    def _entry_folder(self, entry: str) -> Path:
        """``root_path / entry``, created if missing."""
        entry = _validate.entry_type(entry, "entry")
        root = self.root_path
        if root is None:
            raise InvalidArgumentError(
                f"the store {self.url} has no root_path (a MariaDB store has none unless "
                "AMSDataStore(..., root_path=...) gives one), so no folder for "
                f"{entry}")
        folder = root / entry
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a read-only place: the path is still the answer
            LOGGER.debug("could not create %s: %s", folder, error)
        return folder

    def get_candidate_path(self) -> Path:
        """The folder of candidate files (``root_path/candidates``), where AMSlib writes."""
        return self._entry_folder("candidates")

    def get_data_path(self) -> Path:
        """The folder of data files (``root_path/data``)."""
        return self._entry_folder("data")

    def get_model_path(self) -> Path:
        """The folder of models (``root_path/models``)."""
        return self._entry_folder("models")

    @property
    def _entry_paths(self) -> Dict[str, Path]:
        """Entry -> folder, as the original's attribute (empty without a root)."""
        root = self.root_path
        return {} if root is None else {entry: root / entry for entry in STORE_FOLDERS}

    def _suggested_path(self, entry: str, domain_name: Optional[str]) -> str:
        """A fresh file name, under ``root_path/entry`` when the store has a root."""
        name = self._suggest_entry_file_name(entry, domain_name)
        if os.path.isabs(name) or self.root_path is None:
            return name
        return str(self._entry_folder(entry) / name)

    # ------------------------------------------------------------------ original protected API
    def _add_entry(self, domain_name: str, entry: str, mime_type: Optional[str] = None,
                   data_files: Sequence[PathLike] = (), version: Union[None, int, str] = None,
                   metadata: Optional[Mapping[str, Any]] = None) -> int:
        """The original's ``_add_entry(domain, entry, mime_type, files, version, metadata)``.

        Registers ``data_files`` in one version of ``entry``; returns the
        version. The mime type is the entry's (``hdf5`` or ``zip``): another
        one is logged and ignored. Upstream's ``ams_wf/AMSStore.py`` passes
        ``(entry, domain)``: when ``entry`` is not an entry type and
        ``domain_name`` is, the two are swapped (logged).
        """
        valid = self.valid_entries
        if (isinstance(entry, str) and isinstance(domain_name, str)
                and entry not in valid and domain_name in valid):
            LOGGER.warning("_add_entry: %r is not an entry type but %r is; reading them as "
                           "domain %r, entry %r", entry, domain_name, entry, domain_name)
            domain_name, entry = entry, domain_name
        entry = _validate.entry_type(entry, "entry")
        if mime_type is not None and mime_type != self.entry_mime_types[entry]:
            LOGGER.warning("_add_entry: mime type %r ignored: %s files are stored as %r",
                           mime_type, entry, self.entry_mime_types[entry])
        if isinstance(data_files, (str, os.PathLike)):
            data_files = [data_files]
        extra = None
        if entry == "models" and isinstance(metadata, Mapping):
            # The original's raw form carries a model's fields in its metadata.
            fields = {k: v for k, v in metadata.items() if k in MODEL_FIELDS and k != "path"}
            metadata = {k: v for k, v in metadata.items() if k not in fields}
            extra = _validate.metadata(fields)
        return self._add_entries(domain_name, entry, list(data_files), version, metadata,
                                 extra=extra)

    def _remove_entry_file(self, domain_name: Optional[str], entry: str,
                           data_files: Optional[Sequence[PathLike]] = (),
                           delete_files: bool = False, *, version: Any = None,
                           metadata: Optional[Mapping[str, Any]] = None, force: bool = False):
        """The original's ``_remove_entry_file(domain, entry, files, delete_files=False)``.

        Removes ``data_files`` from ``entry`` of ``domain_name`` (every domain
        holding them when None), deleting the files when ``delete_files``
        (only files no record still references). No files: nothing happens.
        Returns a :class:`~ams.store.RemoveReport`.
        """
        from .store import RemoveReport
        delete_files = _validate.boolean(delete_files, "delete_files")
        entry = _validate.entry_type(entry, "entry")
        if not data_files:
            return RemoveReport()
        if domain_name is not None:
            return self._remove_entries(domain_name, entry, data_files, version, metadata,
                                        delete_files, force=force)
        paths = _validate.path_list(data_files, "data_files")
        by_domain: Dict[str, List[str]] = {}
        for path in dict.fromkeys(paths):
            for found in self.find(filename=path, entry_type=entry):
                by_domain.setdefault(found["domain_name"], []).append(path)
        report = RemoveReport()
        for domain, domain_paths in sorted(by_domain.items()):
            part = self._remove_entries(domain, entry, domain_paths, version, metadata,
                                        delete_files, force=force)
            report.removed.extend(part.removed)
            report.purged.extend(part.purged)
            report.kept.extend(part.kept)
            report.purge_errors.update(part.purge_errors)
        report.removed.sort()
        report.not_found = sorted(set(paths) - set(report.removed))
        return report

    def get_raw_content(self, domain_name: Optional[str] = None,
                        entry: Optional[str] = None) -> Dict[str, Dict[str, Dict[int, List[Dict[str, Any]]]]]:
        """Everything the store holds, as the original's ``get_raw_content``.

        ``{domain: {entry_type: {version: [attributes, ...]}}}`` for
        ``domain_name`` (None: all) and ``entry`` (None: all three); each
        file's attributes are its metadata plus ``id``, ``uri`` (the path) and
        ``mime_type``. (Kosh's bookkeeping fields ``fast_sha``,
        ``associated`` and the record dates are left out.)
        """
        entries = list(self.valid_entries) if entry is None else [_validate.entry_type(entry, "entry")]
        entries.sort(key=STORE_FOLDERS.index)
        content: Dict[str, Dict[str, Dict[int, List[Dict[str, Any]]]]] = {}
        for found in self.find(domain_name=domain_name, entry_type=None if entry is None else entry):
            domain = content.setdefault(found["domain_name"], {kind: {} for kind in entries})
            attributes = {"id": found["id"], "uri": found["filename"],
                          "mime_type": self.entry_mime_types[found["entry_type"]],
                          **found["metadata"]}
            domain[found["entry_type"]].setdefault(found["version"], []).append(attributes)
        return content

    # ------------------------------------------------------------------ deployment
    def deployment_config(self, domain_names: Union[str, Sequence[str]],
                          version: Union[str, int] = "latest", **options: Any) -> Dict[str, Any]:
        """The ``AMS_OBJECTS`` dict AMSlib reads; see :func:`ams.deploy.deployment_config`."""
        from .deploy import deployment_config
        return deployment_config(self, domain_names, version, **options)


# --------------------------------------------------------------------------- original form
class KoshEraStore(_KoshEraBase):  # object at run time: a mixin put before AMSDataStore
    """A store built with the original Kosh backend's arguments, behaving as it did.

    ``AMSDataStore(store_path, store_name, name, delete_all_contents=False)``
    opens the Kosh (SQLite) file ``store_path/store_name`` as application
    ``name``, creates ``store_path/{data,candidates,models}`` and, if absent,
    ``store_path/ams_config.json`` (the original's content). Where the eras
    disagree it follows the original:

    * ``remove_data(domain, data_files, delete_files=False)``,
      ``remove_candidates(domain, data_files, delete_files=False)``,
      ``remove_models(domain, model, delete_files=False)``: no files, no-op;
    * ``move(domain, src_entry, dest_entry, files)`` copies ``files`` into the
      store's ``dest_entry`` folder (metadata carried over; sources removed
      and deleted); the reference's five-argument form works too;
    * ``search`` returns :class:`~ams.store_types.FlatEntryDict` entries
      (``domain, entry, version, file`` and the metadata at the top level),
      and ``version="latest"`` exactly one: the first of the highest version;
    * ``delete_all_contents=True`` wipes the Kosh file each time the store
      is opened (the registered files stay on disk);
    * ``_suggest_entry_file_name`` returns a path in the entry's folder.
    """

    def __init__(self, store_path: PathLike, store_name: PathLike, name: str,
                 delete_all_contents: bool = False) -> None:
        root = Path(_validate.absolute_path(store_path, "store_path"))
        if isinstance(store_name, bytes) or not isinstance(store_name, (str, os.PathLike)) \
                or not os.fspath(store_name):
            raise InvalidArgumentTypeError(f"store_name must be a non-empty file name, not "
                                           f"{store_name!r}")
        name = _validate.name(name, "name")
        delete_all_contents = _validate.boolean(delete_all_contents, "delete_all_contents")
        super().__init__(name, str(root / os.fspath(store_name)))
        self._root_path_given = root
        self._delete_all_contents = delete_all_contents
        create_store_directories(root)
        write_store_config(root, store_name, name)

    def open(self):
        if not self.is_open() and self._delete_all_contents:
            for suffix in ("", "-journal", "-wal", "-shm"):
                try:
                    os.remove(self.url.path + suffix)
                except FileNotFoundError:
                    pass
            LOGGER.info("delete_all_contents: emptied %s", self.url.path)
        return super().open()

    def _suggest_entry_file_name(self, entry: str, domain_name: Optional[str] = None) -> str:
        return str(self._entry_folder(entry) / super()._suggest_entry_file_name(entry, domain_name))

    # ------------------------------------------------------------------ removing
    def _era_remove(self, domain_name: Optional[str], entry: str, files: Any, delete_files: Any,
                    options: Dict[str, Any], files_name: str):
        from .store import RemoveReport
        for alias in ("filenames", "models") if entry == "models" else ("filenames",):
            if alias in options:
                if files:
                    raise InvalidArgumentError(f"give the files once ({files_name} or {alias})")
                files = options.pop(alias)
        if "purge" in options:
            delete_files = options.pop("purge")
        version = options.pop("version", None)
        metadata = options.pop("metadata", None)
        force = options.pop("force", False)
        if options:
            raise InvalidArgumentTypeError(f"remove_{entry}: unexpected keyword(s) "
                                           + ", ".join(sorted(options)))
        delete_files = _validate.boolean(delete_files, "delete_files")
        if not files:
            if version is None and not metadata:
                return RemoveReport()  # the original removed nothing
            return self._remove_entries(domain_name, entry, None, version, metadata,  # type: ignore[arg-type]  # None: every domain, as the original
                                        delete_files, force=force)
        return self._remove_entry_file(domain_name, entry, files, delete_files, version=version,
                                       metadata=metadata, force=force)

    def remove_data(self, domain_name: str, data_files: Sequence[PathLike] = (),
                    delete_files: bool = False, **options: Any):
        """The original's ``remove_data(domain, data_files, delete_files=False)``.

        Keywords also taken: ``version``, ``metadata``, ``force``,
        ``filenames`` (= data_files), ``purge`` (= delete_files).
        """
        return self._era_remove(domain_name, "data", data_files, delete_files, options,
                                "data_files")

    def remove_candidates(self, domain_name: str, data_files: Sequence[PathLike] = (),
                          delete_files: bool = False, **options: Any):
        """The original's ``remove_candidates(domain, data_files, delete_files=False)``."""
        return self._era_remove(domain_name, "candidates", data_files, delete_files, options,
                                "data_files")

    def remove_models(self, domain_name: str, model: Sequence[PathLike] = (),
                      delete_files: bool = False, **options: Any):
        """The original's ``remove_models(domain, model, delete_files=False)`` (``models=`` too)."""
        return self._era_remove(domain_name, "models", model, delete_files, options, "model")

    # ------------------------------------------------------------------ moving
    def move(self, domain_name: str, *args: Any, **kwargs: Any) -> List[str]:
        """``move(domain, src_entry, dest_entry, files, version=None)``: into ``dest_entry``'s folder.

        Copies ``files`` (registered in ``src_entry``) into
        ``root_path/dest_entry``, registers the copies in one new version of
        ``dest_entry`` with their metadata, removes the sources and deletes
        them; returns the new paths. No files: nothing happens. The
        reference's ``move(domain, dest_root_path, src_type, dest_type,
        filenames)`` works as well.
        """
        if len(args) >= 4 or {"dest_root_path", "src_type", "dest_type", "filenames"} & set(kwargs):
            return super().move(domain_name, *args, **kwargs)
        return self._era_move(domain_name, *args, **kwargs)

    def _era_move(self, domain_name: str, src_entry: str, dest_entry: str,
                  files: Optional[Sequence[PathLike]], version: Any = None) -> List[str]:
        dest_entry = _validate.entry_type(dest_entry, "dest_entry")
        if files is None or (isinstance(files, (list, tuple)) and not files):
            return []
        return super().move(domain_name, self._entry_folder(dest_entry), src_entry, dest_entry,
                            files, version)  # type: ignore[arg-type]  # move() validates path-likes

    # ------------------------------------------------------------------ searching
    def search(self, domain_name: Optional[str] = None, entry: Optional[str] = None,  # type: ignore[override]  # flat dicts, as the original
               version: Union[None, int, str] = None,
               metadata: Optional[Mapping[str, Any]] = None) -> List[FlatEntryDict]:
        """The original's flat results; ``version="latest"``: one entry, of the highest version.

        Metadata conditions as in the reference's ``search``; the version
        selector is passed on unchanged (``"latest"``, an int, a digit string).
        """
        found = cast(List[EntryDict], super().search(domain_name, entry, version, metadata))
        if found and isinstance(version, str) and version == "latest":
            top = max(item["version"] for item in found)
            found = [next(item for item in found if item["version"] == top)]
        return [FlatEntryDict(item) for item in found]
