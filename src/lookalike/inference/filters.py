"""Metadata filters on catalogue items: ``brand == "acme" and price < 100``, ``category in ["sofa", "chair"]``.

The language is the common part of vector databases' boolean expressions (Milvus's, among others): comparisons
``== != < <= > >=`` (chained too), ``in [...]`` / ``not in [...]``, ``and`` / ``or`` / ``not``, parentheses;
names are ``label`` or a manifest column, literals strings (either quote), numbers or ``true`` / ``false``.
Item values are text: a number literal compares the value as a number (an item whose value is not a finite
number does not match), ``true`` / ``false`` match ``true``, ``1``, ``yes`` (any case) and the others. The
expression is read with Python's own parser (``ast``) and only these forms are accepted: nothing in it is ever
run. A parsed expression is a small tree of conditions that the FAISS catalogue evaluates on each item
(:func:`matches`) and the vector database receives in its own filter language (:func:`milvus_expression`).
"""

from __future__ import annotations

import ast
import json
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

from lookalike.errors import LookalikeError

MAX_FILTER_CHARS = 1000
TRUE = {"true", "1", "yes"}
OPERATORS: dict[type, str] = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
FLIPPED = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "==", "!=": "!="}  # 100 > price is price < 100
TEST: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
NUMBER, TRUTH = "__num", "__bool"  # suffixes of a column's typed copies in the vector database

Values = Mapping[str, str]
Literal = Union[str, float, bool]


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


def _typed(text: str | None, like: Literal) -> Literal | None:
    """An item's text value as the literal's type (None: it has none, or it is not one)."""
    if text is None:
        return None
    if isinstance(like, bool):
        return text.strip().lower() in TRUE
    if isinstance(like, float):
        return number(text)
    return text


def number(text: str) -> float | None:
    """A text value as a finite number, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def matches(condition: Condition, values: Values) -> bool:
    """Whether one item (its column -> text values) passes ``condition``."""
    if isinstance(condition, Compare):
        item = _typed(values.get(condition.column), condition.value)
        return item is not None and TEST[condition.op](item, condition.value)
    if isinstance(condition, OneOf):
        found = any(_typed(values.get(condition.column), o) == o for o in condition.values)
        return found == condition.inside
    if isinstance(condition, Both):
        return (any if condition.any_ else all)(matches(p, values) for p in condition.parts)
    return not matches(condition.part, values)


def milvus_expression(condition: Condition) -> str:
    """``condition`` in Milvus's filter language, over items stored as :func:`milvus_fields` lays them out (so
    that an item lacking a value fails a comparison as in :func:`matches`, also under ``not``)."""
    if isinstance(condition, Compare):
        if isinstance(condition.value, bool):
            ref, literal = _reference(condition.column, TRUTH), "true" if condition.value else "false"
        elif isinstance(condition.value, float):
            ref, literal = _reference(condition.column, NUMBER), repr(condition.value)
        else:
            ref, literal = _reference(condition.column, ""), json.dumps(condition.value)
        test = f"{ref} {condition.op} {literal}"
        return f"({test})" if condition.column == "label" and not isinstance(condition.value, (bool, float)) \
            else f"(exists {ref} and {test})"
    if isinstance(condition, OneOf):
        found = " or ".join(milvus_expression(Compare(condition.column, "==", v)) for v in condition.values)
        found = f"({found})" if condition.values else "(id < 0)"  # in []: nothing
        return found if condition.inside else f"(not {found})"
    if isinstance(condition, Both):
        return "(" + (" or " if condition.any_ else " and ").join(milvus_expression(p) for p in condition.parts) + ")"
    return f"(not {milvus_expression(condition.part)})"


def _reference(column: str, suffix: str) -> str:
    return "label" if column == "label" and not suffix else f"$meta[{json.dumps(column + suffix)}]"


def milvus_fields(values: Values) -> dict[str, Any]:
    """An item's columns as the vector database stores them: each as text, as a number where it is one, and as
    true / false (``label`` is a field of its own; its typed copies are stored like the others')."""
    stored: dict[str, Any] = {}
    for column, text in values.items():
        if column != "label":
            stored[column] = text
        if (value := number(text)) is not None:
            stored[column + NUMBER] = value
        stored[column + TRUTH] = text.strip().lower() in TRUE
    return stored


def _literal(node: ast.expr) -> Literal:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)) and not isinstance(node.value, bool):
        return float(node.value) if isinstance(node.value, (int, float)) else node.value
    if isinstance(node, ast.Name) and node.id in ("true", "false", "True", "False"):
        return node.id.lower() == "true"
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


def _compile(node: ast.expr, columns: set[str]) -> Condition:
    if isinstance(node, ast.BoolOp):
        return Both(tuple(_compile(v, columns) for v in node.values), isinstance(node.op, ast.Or))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return Not(_compile(node.operand, columns))
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
