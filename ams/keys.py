"""Names the store gives meaning to: entry types, their mime types and suffixes, reserved metadata keys.

One place for each fact: the facade, the catalogue, the importer and the CLI
read them from here.
"""

from __future__ import annotations

#: The entry types of a domain, in the order messages list them.
ENTRY_TYPES = ("data", "models", "candidates")
#: Mime type of each entry's Kosh association (TorchScript files are zip archives).
MIME_TYPES = {"data": "hdf5", "models": "zip", "candidates": "hdf5"}
#: File name suffix of each entry's suggested file names.
SUFFIXES = {"data": "h5", "models": "pt", "candidates": "h5"}

#: What a change-feed event says happened.
ACTIONS = ("add", "remove", "move", "alias", "repair", "import")

#: Attributes Kosh keeps on a file record besides the user's metadata.
KOSH_FILE_FIELDS = frozenset({
    "fast_sha", "long_sha", "uri", "mime_type", "associated", "creation_date",
    "last_modified_date", "loader_kwargs",
})
#: Attributes of a model's entry that come from its description and errors.
MODEL_FIELDS = ("path", "threshold", "uq_type", "uq_aggregate", "test_error", "val_error")
#: Lineage attributes of a model's entry: the data versions and files it was trained on.
TRAINED_ON_VERSIONS = "trained_on_data_versions"
TRAINED_ON_FILES = "trained_on_files"
#: Keys no user metadata may use, on every entry type: the store sets them itself.
RESERVED_KEYS = frozenset(KOSH_FILE_FIELDS | {"date", TRAINED_ON_VERSIONS, TRAINED_ON_FILES})
#: Keys reserved on models besides: the model's description and errors.
RESERVED_MODEL_KEYS = RESERVED_KEYS | frozenset(MODEL_FIELDS)
