"""Metadata filters on catalogue items: ``brand == "acme" and price < 100``, ``category in ["sofa", "chair"]``.

The language is the common part of vector databases' boolean expressions (Milvus's, among others): comparisons
``== != < <= > >=`` (chained too), ``in [...]`` / ``not in [...]``, ``and`` / ``or`` / ``not``, parentheses;
names are ``label`` or a manifest column, literals strings (either quote), numbers or ``true`` / ``false``.
Item values are text: a number literal compares the value as a number (an item whose value is not a finite
number does not match), ``true`` matches the texts ``true``, ``yes``, ``1`` and ``false`` the texts ``false``,
``no``, ``0`` (any case, spaces around ignored); any other text is neither and matches neither. The expression is
read with Python's own parser (``ast``) and only these forms are accepted: nothing in it is ever run; it is at most
:data:`MAX_FILTER_CHARS` long and nested at most :data:`MAX_DEPTH` deep. A parsed expression is a small tree of
conditions that the FAISS catalogue evaluates column by column over all items at once (:func:`mask`) and the vector
database receives in its own filter language (:func:`milvus_expression`). Conditions that are equal mean the
same: ``true`` is :attr:`Truth.TRUE`, never the number 1.
"""

from __future__ import annotations

import ast
import enum
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from lookalike.errors import LookalikeError

MAX_FILTER_CHARS = 1000
MAX_DEPTH = 32  # and / or / not / parentheses nested in one another
TRUE_TEXTS, FALSE_TEXTS = frozenset({"true", "yes", "1"}), frozenset({"false", "no", "0"})
OPERATORS: dict[type, str] = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
FLIPPED = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "==", "!=": "!="}  # 100 > price is price < 100
TEST: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
NUMBER, TRUTH = "__num", "__bool"  # suffixes of a column's typed copies in the vector database


class Truth(enum.Enum):
    """The literals ``true`` / ``false``: a type of their own, so that no condition on them equals one on a
    number (Python's ``True == 1 == 1.0`` would make a cache of answers mix them up)."""

    FALSE = 0
    TRUE = 1


Values = Mapping[str, str]
Literal = Union[str, float, Truth]


@dataclass(frozen=True)
class Compare:
    """``column op value``."""

    column: str
    op: str
    value: Literal


@dataclass(frozen=True)
class OneOf:
    """``column in [values]`` (``inside``) or ``column not in [values]``."""

    column: str
    values: tuple[Literal, ...]
    inside: bool = True


@dataclass(frozen=True)
class Both:
    """All of ``parts`` (``and``), or any of them (``any_``: ``or``)."""

    parts: tuple[Condition, ...]
    any_: bool = False


@dataclass(frozen=True)
class Not:
    part: Condition


Condition = Union[Compare, OneOf, Both, Not]


def truth(text: str) -> Truth | None:
    """A text value read as true / false (:data:`TRUE_TEXTS`, :data:`FALSE_TEXTS`), or None: neither."""
    word = text.strip().lower()
    return Truth.TRUE if word in TRUE_TEXTS else Truth.FALSE if word in FALSE_TEXTS else None


def number(text: str) -> float | None:
    """A text value as a finite number, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class Columns:
    """Items' column values as arrays, each read once: the text (None where an item lacks the column), the number
    (NaN where it is none) and the truth (1 true, 0 false, -1 neither or missing)."""

    def __init__(self, rows: Sequence[Values]):
        self.rows = rows
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def text(self, column: str) -> np.ndarray:
        key = (column, "text")
        if key not in self._arrays:
            self._arrays[key] = np.array([row.get(column) for row in self.rows], dtype=object)
        return self._arrays[key]

    def number(self, column: str) -> np.ndarray:
        key = (column, "number")
        if key not in self._arrays:
            found = (number(t) if t is not None else None for t in self.text(column))
            self._arrays[key] = np.fromiter((math.nan if v is None else v for v in found), np.float64, len(self))
        return self._arrays[key]

    def truth(self, column: str) -> np.ndarray:
        key = (column, "truth")
        if key not in self._arrays:
            found = (truth(t) if t is not None else None for t in self.text(column))
            self._arrays[key] = np.fromiter((-1 if v is None else v.value for v in found), np.int8, len(self))
        return self._arrays[key]


def _compare(columns: Columns, column: str, op: str, value: Literal) -> np.ndarray:
    """``column op value`` over all items; an item without a value of the literal's type fails it."""
    if isinstance(value, Truth):
        values = columns.truth(column)
        return (values >= 0) & TEST[op](values, value.value)
    if isinstance(value, float):
        values = columns.number(column)
        with np.errstate(invalid="ignore"):
            return ~np.isnan(values) & TEST[op](values, value)
    values = columns.text(column)
    present = np.fromiter((v is not None for v in values), bool, len(values))
    return present & np.asarray(TEST[op](values, value), dtype=bool)


def _one_of(columns: Columns, condition: OneOf) -> np.ndarray:
    found = np.zeros(len(columns), bool)
    numbers = [v for v in condition.values if isinstance(v, float)]
    truths = [v.value for v in condition.values if isinstance(v, Truth)]
    texts = {v for v in condition.values if isinstance(v, str)}
    if numbers:
        found |= np.isin(columns.number(condition.column), numbers)
    if truths:
        found |= np.isin(columns.truth(condition.column), truths)
    if texts:
        found |= np.fromiter((v in texts for v in columns.text(condition.column)), bool, len(columns))
    return found if condition.inside else ~found


def mask(condition: Condition, columns: Columns) -> np.ndarray:
    """Which items (rows of ``columns``) pass ``condition``, as a boolean array: one vectorised pass per
    comparison, so a filter costs a few array operations per item, whatever its literals."""
    if isinstance(condition, Compare):
        return _compare(columns, condition.column, condition.op, condition.value)
    if isinstance(condition, OneOf):
        return _one_of(columns, condition)
    if isinstance(condition, Both):
        parts = [mask(p, columns) for p in condition.parts]
        return np.logical_or.reduce(parts) if condition.any_ else np.logical_and.reduce(parts)
    return ~mask(condition.part, columns)


def matches(condition: Condition, values: Values) -> bool:
    """Whether one item (its column -> text values) passes ``condition``."""
    return bool(mask(condition, Columns([values]))[0])


def milvus_expression(condition: Condition) -> str:
    """``condition`` in Milvus's filter language, over items stored as :func:`milvus_fields` lays them out (so
    that an item lacking a value fails a comparison as in :func:`matches`, also under ``not``)."""
    if isinstance(condition, Compare):
        if isinstance(condition.value, Truth):
            ref, literal = _reference(condition.column, TRUTH), "true" if condition.value is Truth.TRUE else "false"
        elif isinstance(condition.value, float):
            ref, literal = _reference(condition.column, NUMBER), repr(condition.value)
        else:
            ref, literal = _reference(condition.column, ""), milvus_string(condition.value)
        test = f"{ref} {condition.op} {literal}"
        # ``exists`` in parentheses of its own: a Milvus 2.3 server reads ``exists a and b`` as ``exists (a and b)``
        return f"({test})" if condition.column == "label" and not isinstance(condition.value, (Truth, float)) \
            else f"((exists {ref}) and ({test}))"
    if isinstance(condition, OneOf):
        found = " or ".join(milvus_expression(Compare(condition.column, "==", v)) for v in condition.values)
        found = f"({found})" if condition.values else "(id < 0)"  # in []: nothing
        return found if condition.inside else f"(not {found})"
    if isinstance(condition, Both):
        return "(" + (" or " if condition.any_ else " and ").join(milvus_expression(p) for p in condition.parts) + ")"
    return f"(not {milvus_expression(condition.part)})"


def _reference(column: str, suffix: str) -> str:
    return "label" if column == "label" and not suffix else f"$meta[{milvus_string(column + suffix)}]"


MILVUS_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def milvus_string(text: str) -> str:
    """``text`` as a string literal of Milvus's filter grammar: double quotes, backslash escapes for the quote, the
    backslash, newline, carriage return and tab, every other character as it is (Milvus knows no ``\\u`` escape)."""
    return '"' + text.translate(MILVUS_ESCAPES) + '"'


def milvus_fields(values: Values) -> dict[str, Any]:
    """An item's columns as the vector database stores them: each as text, as a number where it is one, and as
    true / false (``label`` is a field of its own; its typed copies are stored like the others')."""
    stored: dict[str, Any] = {}
    for column, text in values.items():
        if column != "label":
            stored[column] = text
        if (value := number(text)) is not None:
            stored[column + NUMBER] = value
        if (reading := truth(text)) is not None:
            stored[column + TRUTH] = reading is Truth.TRUE
    return stored


def _literal(node: ast.expr) -> Literal:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)) and not isinstance(node.value, bool):
        return float(node.value) if isinstance(node.value, (int, float)) else node.value
    if isinstance(node, ast.Name) and node.id in ("true", "false", "True", "False"):
        return Truth.TRUE if node.id.lower() == "true" else Truth.FALSE
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and isinstance(node.operand.value, (int, float)) and not isinstance(node.operand.value, bool):
        return -float(node.operand.value)
    raise ValueError("a value must be a string, a number, true or false")


def _comparison(name: str, op: ast.cmpop, node: ast.expr, flipped: bool) -> Condition:
    if isinstance(op, (ast.In, ast.NotIn)):
        if flipped:
            raise ValueError("write col in [...], the column first")
        if not isinstance(node, (ast.List, ast.Tuple)):
            raise ValueError("'in' takes a list: col in [\"a\", \"b\"]")
        return OneOf(name, tuple(_literal(e) for e in node.elts), isinstance(op, ast.In))
    if type(op) not in OPERATORS:
        raise ValueError("compare with == != < <= > >= or in")
    value, symbol = _literal(node), OPERATORS[type(op)]
    if symbol in ("<", "<=", ">", ">=") and not isinstance(value, float):
        raise ValueError("< <= > >= compare numbers only")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    return Compare(name, FLIPPED[symbol] if flipped else symbol, value)


def _compile(node: ast.expr, columns: set[str], depth: int = 0) -> Condition:
    if depth > MAX_DEPTH:
        raise ValueError(f"and / or / not are nested more than {MAX_DEPTH} deep")
    if isinstance(node, ast.BoolOp):
        return Both(tuple(_compile(v, columns, depth + 1) for v in node.values), isinstance(node.op, ast.Or))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return Not(_compile(node.operand, columns, depth + 1))
    if isinstance(node, ast.Compare):
        checks, left = [], node.left
        for op, right in zip(node.ops, node.comparators):
            name, other, flipped = (left, right, False) if isinstance(left, ast.Name) and left.id in columns \
                else (right, left, True)
            if not (isinstance(name, ast.Name) and name.id in columns):
                raise ValueError(f"each comparison needs a column ({', '.join(sorted(columns))})")
            checks.append(_comparison(name.id, op, other, flipped))
            left = right
        return checks[0] if len(checks) == 1 else Both(tuple(checks))
    if isinstance(node, ast.Name):
        raise ValueError(f"{node.id!r} alone is not a condition (write {node.id} == \"...\")")
    raise ValueError("use comparisons joined by and / or / not")


@dataclass(frozen=True)
class Filter:
    """A parsed filter expression: its text and its condition tree."""

    text: str
    condition: Condition

    def matches(self, values: Values) -> bool:
        """Whether one item's column values pass the filter."""
        return matches(self.condition, values)


def parse_filter(text: str, columns: set[str]) -> Filter:
    """Parse ``text`` against the catalogue's ``columns``; one clear message for anything else."""
    text = text.strip()
    if len(text) > MAX_FILTER_CHARS:
        raise LookalikeError(f"The filter is longer than {MAX_FILTER_CHARS} characters")
    spelled = text.replace("&&", " and ").replace("||", " or ")
    try:
        tree = ast.parse(spelled, mode="eval").body
        return Filter(text, _compile(tree, columns))
    except SyntaxError as e:
        raise LookalikeError(f"Cannot read the filter {text!r}: {e.msg}. Example: brand == \"acme\" and "
                             "price < 100") from None
    except (ValueError, RecursionError, MemoryError) as e:
        reason = str(e) if isinstance(e, ValueError) else "nested too deeply"
        raise LookalikeError(f"Cannot use the filter {text!r}: {reason}") from None


def restriction(filter_text: str | None, columns: set[str], category: str | None = None,
                category_by: str = "label") -> Condition | None:
    """What a search keeps: the filter's condition and, with ``category``, ``category_by == category``."""
    parts = ([parse_filter(filter_text, columns).condition] if filter_text else [])
    if category is not None:
        parts.append(Compare(category_by, "==", category))
    return None if not parts else parts[0] if len(parts) == 1 else Both(tuple(parts))
