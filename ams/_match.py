"""Metadata conditions of ``search`` and ``remove_*``: parse once, match many.

``{"key": value}`` is equality; ``{"key": {"<": 0.1}}`` compares, with the
operators ``==, !=, <, <=, >, >=, in`` (several in one dict are ANDed).
Equality is type-aware: ``True`` does not equal ``1``, ``1`` equals ``1.0``.
Ordering compares numbers with numbers and str with str (an entry whose value
is of the other kind does not match), and an ordering operand that is a str
spelling a number (``{"val_error": {"<": "0.5"}}``) is refused: see
:func:`parse_conditions`.

>>> match = compile_conditions({"val_error": {"<": 0.1}, "kind": "eos"})
>>> match({"val_error": 0.05, "kind": "eos"}), match({"val_error": 0.2, "kind": "eos"})
(True, False)
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Dict, List, Mapping, Tuple

from . import _validate
from .errors import InvalidArgumentError, InvalidMetadataError

OPERATORS: Dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}
Condition = Tuple[str, str, Any]


def compile_conditions(conditions: Any) -> Callable[[Mapping[str, Any]], bool]:
    """Check ``conditions`` and return a predicate over an entry's metadata dict."""
    return matcher(parse_conditions(conditions))


def parse_conditions(conditions: Any) -> List[Condition]:
    """Check ``conditions``; return them as ``(key, operator, operand)`` triples.

    The store passes these to the adapter too, which narrows its reads with
    them in SQL before :func:`matcher` decides exactly.

    An ordering operator (``<``, ``<=``, ``>``, ``>=``) whose operand is a str
    that ``float()`` accepts (``"0.5"``, ``"3"``, ``"1e-3"``) raises
    :class:`InvalidArgumentError`: such a filter would compare a str with the
    numbers a key like ``val_error`` holds and silently match nothing, a
    mistake typical of values taken from a command line or a config file. A
    str operand that is not a number (``{"date": {">=": "2024-05-01"}}``)
    orders str values as before. The price: str values that spell numbers
    (``"0042"``) cannot be ordered as str; store them as numbers.

    >>> parse_conditions({"val_error": {"<": "0.5"}})
    Traceback (most recent call last):
    ...
    ams.errors.InvalidArgumentError: metadata filter 'val_error': '<' got the str '0.5', \
which spells a number; ordering compares numbers with numbers and str with str, so \
give the number 0.5
    >>> parse_conditions({"date": {">=": "2024-05-01"}})
    [('date', '>=', '2024-05-01')]
    """
    if conditions is None:
        conditions = {}
    if not isinstance(conditions, Mapping):
        raise InvalidMetadataError(f"metadata filter must be a dict, not "
                                   f"{type(conditions).__name__}")
    parsed: List[Condition] = []
    for key, wanted in conditions.items():
        if not isinstance(key, str) or not key:
            raise InvalidMetadataError(f"metadata filter keys must be non-empty str, not {key!r}")
        if isinstance(wanted, Mapping):
            if not wanted:
                raise InvalidMetadataError(f"metadata filter for {key!r} has no operator")
            for op, operand in wanted.items():
                parsed.append((key, op, _operand(key, op, operand)))
        else:
            parsed.append((key, "==", _operand(key, "==", wanted)))
    return parsed


def matcher(parsed: List[Condition]) -> Callable[[Mapping[str, Any]], bool]:
    """The predicate over an entry's metadata for conditions from :func:`parse_conditions`."""
    def match(metadata: Mapping[str, Any]) -> bool:
        for key, op, operand in parsed:
            if key not in metadata or not _compare(metadata[key], op, operand):
                return False
        return True

    return match


def _operand(key: str, op: Any, operand: Any) -> Any:
    if op == "in":
        if not isinstance(operand, (list, tuple, set, frozenset)):
            raise InvalidMetadataError(f"metadata filter {key!r}: 'in' needs a list, "
                                       f"not {operand!r}")
        return [_validate._value(item, f"filter {key!r}") for item in operand]
    if op not in OPERATORS:
        raise InvalidMetadataError(f"metadata filter {key!r}: unknown operator {op!r}; "
                                   f"use one of {', '.join(list(OPERATORS) + ['in'])}")
    value = _validate._value(operand, f"filter {key!r}")
    if op not in ("==", "!=") and (isinstance(value, (list, bool))):
        raise InvalidMetadataError(f"metadata filter {key!r}: {op!r} needs a number or a str, "
                                   f"not {operand!r}")
    if op not in ("==", "!=") and isinstance(value, str) and _spells_number(value):
        raise InvalidArgumentError(f"metadata filter {key!r}: {op!r} got the str {value!r}, "
                                   "which spells a number; ordering compares numbers with "
                                   f"numbers and str with str, so give the number {value.strip()}")
    return value


def _spells_number(text: str) -> bool:
    """Whether ``float()`` reads ``text`` as a number ("0.5", " 3 ", "1e-3", "inf")."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _same_kind(a: Any, b: Any) -> bool:
    return _validate._kind(a) == _validate._kind(b) if not isinstance(a, list) else isinstance(b, list)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
                and all(_equal(x, y) for x, y in zip(a, b)))
    return _same_kind(a, b) and a == b


def _compare(value: Any, op: str, operand: Any) -> bool:
    if op == "in":
        return any(_equal(value, item) for item in operand)
    if op == "==":
        return _equal(value, operand)
    if op == "!=":
        return not _equal(value, operand)
    if isinstance(value, list) or not _same_kind(value, operand):
        return False
    return OPERATORS[op](value, operand)
