"""Nested (dict) metadata values: how they are written to Kosh and read back.

Sina, under Kosh, stores a metadata value as a number, a string or a list of
one of those; a dict has no column. The original backend stored ``str(v)``
for such a value (a Python repr nobody could parse back). Here a dict value is
stored as a **JSON string** (``json.dumps``), so plain Kosh shows a string that
``json.loads`` reads, and ``ams`` gives the dict back.

Which values are JSON is recorded, per file, in the reserved attribute
:data:`JSON_KEYS` (a list of the keys whose value is a JSON-encoded dict).
That marker, not the look of the string, decides: a user's plain string that
happens to be JSON text (``'{"a": 1}'``) is not listed there and stays a
string. A prefix inside the string would have been the other choice; it was
not taken because plain Kosh would then show ``prefix{...}``, which is no
longer JSON, and every user string starting with the prefix would need
escaping.

The pair :func:`encode_metadata` / :func:`decode_metadata` is the whole
conversion: ``_validate.metadata`` encodes what will be written, and whatever
turns a stored record into a user-visible entry decodes (``Entry.to_dict``).
``decode_metadata(encode_metadata(m)) == m`` for every accepted ``m``, and
``encode_metadata(decode_metadata(s)) == s`` for every stored ``s``, so a
record read raw (the importer, ``move``) can be written again unchanged.

>>> stored = encode_metadata({"train": {"lr": 0.001, "layers": [5, 396]}, "note": '{"a": 1}'})
>>> stored["train"], stored[JSON_KEYS]
('{"lr": 0.001, "layers": [5, 396]}', ['train'])
>>> decode_metadata(stored)
{'train': {'lr': 0.001, 'layers': [5, 396]}, 'note': '{"a": 1}'}
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, Dict, Mapping

from .errors import InvalidMetadataError

__all__ = ["JSON_KEYS", "MAX_JSON_LENGTH", "check_nested", "encode_metadata", "decode_metadata"]

#: Reserved attribute listing the keys whose stored value is a JSON-encoded dict.
JSON_KEYS = "ams_json_keys"
#: A JSON-encoded value is one Sina string: VARCHAR(15000) on MariaDB.
MAX_JSON_LENGTH = 15000
_INT64 = 2**63


def check_nested(value: Any, what: str) -> Dict[str, Any]:
    """A plain-``dict`` copy of a nested metadata value that JSON gives back equal.

    Keys: str. Values: bool, int (64-bit), finite float, str, None, lists and
    dicts of those, nested. Tuples, sets, bytes, NaN and infinities are
    rejected (JSON would not give them back as they were), as is an encoding
    longer than :data:`MAX_JSON_LENGTH` characters.
    """
    copy = _plain(value, what)
    text = _dumps(copy)
    if len(text) > MAX_JSON_LENGTH:
        raise InvalidMetadataError(f"{what} is {len(text)} characters as JSON; the limit is "
                                   f"{MAX_JSON_LENGTH}")
    return copy


def _plain(value: Any, what: str) -> Any:
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidMetadataError(f"{what} has a key {key!r} of type {type(key).__name__}; "
                                           "keys of a dict value must be str (JSON would turn it "
                                           "into a str)")
            out[key] = _plain(item, f"{what}[{key!r}]")
        return out
    if isinstance(value, list):
        return [_plain(item, f"an element of {what}") for item in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        value = int(value)
        if not -_INT64 <= value < _INT64:
            raise InvalidMetadataError(f"{what} = {value} does not fit in 64 bits")
        return value
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise InvalidMetadataError(f"{what} = {value!r}: NaN and infinities cannot be stored")
        return value
    raise InvalidMetadataError(f"{what} has type {type(value).__name__} ({value!r:.80}); inside "
                               "a dict value allowed are bool, int, float, str, None, lists "
                               "and dicts")


def _dumps(value: Dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def encode_metadata(values: Mapping[str, Any]) -> Dict[str, Any]:
    """What to write: each dict value as a JSON string, listed under :data:`JSON_KEYS`.

    ``values`` are already checked (dict values by :func:`check_nested`).
    Without dict values the result equals ``values`` (no marker is added).
    """
    out: Dict[str, Any] = {}
    encoded = []
    for key, value in values.items():
        if key == JSON_KEYS:
            continue
        if isinstance(value, Mapping):
            out[key] = _dumps(dict(value))
            encoded.append(key)
        else:
            out[key] = value
    if encoded:
        out[JSON_KEYS] = sorted(encoded)
    return out


def decode_metadata(stored: Mapping[str, Any], strict: bool = False) -> Dict[str, Any]:
    """What a reader sees: the keys listed under :data:`JSON_KEYS` parsed back to dicts.

    The marker itself is dropped. A listed value that is not a JSON object
    (a record edited by hand) is left as stored, or with ``strict=True``
    raises :class:`~ams.errors.InvalidMetadataError` (what writes use, so a
    bad marker is never written again).
    """
    if JSON_KEYS not in stored:
        return dict(stored)
    out = {key: value for key, value in stored.items() if key != JSON_KEYS}
    keys = stored[JSON_KEYS]
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        if strict:
            raise InvalidMetadataError(f"{JSON_KEYS} is reserved: it lists the keys whose value "
                                       f"is a JSON-encoded dict, not {keys!r:.80}")
        return out
    for key in keys:
        text = out.get(key)
        try:
            value = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            value = None
        if isinstance(value, dict):
            out[key] = value
        elif strict:
            raise InvalidMetadataError(f"{JSON_KEYS} lists {key!r}, whose value is not a "
                                       f"JSON-encoded dict: {text!r:.80}")
    return out
