"""Metadata filters on catalogue items: ``brand == "acme" and price < 100``, ``category in ["sofa", "chair"]``.

The language is the common part of vector databases' boolean expressions (Milvus's, among others): comparisons
``== != < <= > >=`` (chained too), ``in [...]`` / ``not in [...]``, ``and`` / ``or`` / ``not``, parentheses;
names are ``label`` or a manifest column, literals strings (either quote), numbers or ``true`` / ``false``.
Item values are text: a number literal compares the value as a number (an item whose value is not a number does
not match), ``true`` / ``false`` match ``true``, ``1``, ``yes`` (any case) and the others. The expression is read
with Python's own parser (``ast``) and only these forms are accepted: nothing in it is ever run.
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from lookalike.errors import LookalikeError

MAX_FILTER_CHARS = 1000
TRUE = {"true", "1", "yes"}
COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge}
ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)

Values = Mapping[str, str]


def _literal(node: ast.expr) -> str | float | bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)) and not isinstance(node.value, bool):
        return float(node.value) if isinstance(node.value, (int, float)) else node.value
    if isinstance(node, ast.Name) and node.id in ("true", "false", "True", "False"):
        return node.id.lower() == "true"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and isinstance(node.operand.value, (int, float)) and not isinstance(node.operand.value, bool):
        return -float(node.operand.value)
    raise ValueError("a value must be a string, a number, true or false")


def _typed(text: str | None, like: str | float | bool) -> str | float | bool | None:
    """An item's text value as the literal's type (None: it has none, or it is not one)."""
    if text is None:
        return None
    if isinstance(like, bool):
        return text.strip().lower() in TRUE
    if isinstance(like, float):
        try:
            value = float(text)
        except ValueError:
            return None
        return None if math.isnan(value) else value
    return text


def _compare(name: str, op: ast.cmpop, node: ast.expr) -> Callable[[Values], bool]:
    if isinstance(op, (ast.In, ast.NotIn)):
        if not isinstance(node, (ast.List, ast.Tuple)):
            raise ValueError("'in' takes a list: col in [\"a\", \"b\"]")
        options = [_literal(e) for e in node.elts]
        inside = isinstance(op, ast.In)
        return lambda v: any(_typed(v.get(name), o) == o for o in options) == inside
    if type(op) not in COMPARE:
        raise ValueError("compare with == != < <= > >= or in")
    value, test = _literal(node), COMPARE[type(op)]
    if isinstance(op, ORDERING) and not isinstance(value, float):
        raise ValueError("< <= > >= compare numbers only")

    def check(v: Values) -> bool:
        item = _typed(v.get(name), value)
        return item is not None and test(item, value)

    return check


def _compile(node: ast.expr, columns: set[str]) -> Callable[[Values], bool]:
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, columns) for v in node.values]
        combine = all if isinstance(node.op, ast.And) else any
        return lambda v: combine(p(v) for p in parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand, columns)
        return lambda v: not inner(v)
    if isinstance(node, ast.Compare):
        checks, left = [], node.left
        for op, right in zip(node.ops, node.comparators):
            name, other, flipped = (left, right, False) if isinstance(left, ast.Name) and left.id in columns \
                else (right, left, True)
            if not (isinstance(name, ast.Name) and name.id in columns):
                raise ValueError(f"each comparison needs a column ({', '.join(sorted(columns))})")
            if flipped:  # 100 > price is price < 100
                flip = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}
                if isinstance(op, (ast.In, ast.NotIn)):
                    raise ValueError("write col in [...], the column first")
                op = flip.get(type(op), type(op))()
            checks.append(_compare(name.id, op, other))
            left = right
        return lambda v: all(c(v) for c in checks)
    if isinstance(node, ast.Name):
        raise ValueError(f"{node.id!r} alone is not a condition (write {node.id} == \"...\")")
    raise ValueError("use comparisons joined by and / or / not")


@dataclass(frozen=True)
class Filter:
    """A parsed filter expression; ``matches(values)`` for one item's column values."""

    text: str
    matches: Callable[[Values], bool]


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
