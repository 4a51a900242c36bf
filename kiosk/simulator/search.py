"""Stripe's Search query language, the part kiosk uses: `metadata['k']:'v'`, `status:'…'`, AND.

Also accepted: `OR` (not mixed with `AND` in one query, as Stripe requires), `-` negation, numeric
comparisons on `amount` and `created` (`>`, `<`, `>=`, `<=`), and `currency`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiosk.simulator.wire import StripeError

if TYPE_CHECKING:
    from collections.abc import Mapping

_CLAUSE = re.compile(
    r"""\s*(?P<neg>-)?
        (?P<field>metadata\[(?P<q>['"])(?P<key>[^'"]+)(?P=q)\]|[a-z_]+)
        \s*(?P<op>:|>=|<=|>|<)\s*
        (?:'(?P<sval>(?:[^'\\]|\\.)*)'|"(?P<dval>(?:[^"\\]|\\.)*)"|(?P<num>-?\d+))\s*""",
    re.VERBOSE,
)
_FIELDS = {"status", "currency", "amount", "created", "metadata", "customer"}


@dataclass(frozen=True, slots=True)
class Clause:
    """One `field op value` term."""

    field: str
    key: str | None
    op: str
    value: str
    negated: bool

    def matches(self, doc: Mapping[str, Any]) -> bool:
        """True when the indexed document satisfies the term."""
        if self.field == "metadata":
            actual: Any = doc["metadata"].get(self.key)
        else:
            actual = doc.get(self.field)
        if self.op == ":":
            hit = actual is not None and str(actual) == self.value
        else:
            if not isinstance(actual, int):
                return self.negated
            target = int(self.value)
            hit = {
                ">": actual > target,
                "<": actual < target,
                ">=": actual >= target,
                "<=": actual <= target,
            }[self.op]
        return hit != self.negated


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: clauses joined by one connective."""

    clauses: tuple[Clause, ...]
    any_of: bool

    def matches(self, doc: Mapping[str, Any]) -> bool:
        """True when the document satisfies the query."""
        results = (c.matches(doc) for c in self.clauses)
        return any(results) if self.any_of else all(results)


def _invalid(query: str, why: str) -> StripeError:
    return StripeError(400, f"Invalid query: {why} (query: {query!r})", param="query")


def parse(query: str) -> Query:
    """Parse a query string, or answer Stripe's 400 for a malformed one."""
    if not query.strip():
        raise _invalid(query, "the query is empty")
    parts = re.split(r"\s+(AND|OR)\s+", query.strip())
    connectives = set(parts[1::2])
    if len(connectives) > 1:
        raise _invalid(query, "AND and OR cannot be mixed in one query")
    clauses = []
    for text in parts[0::2]:
        match = _CLAUSE.fullmatch(text)
        if match is None:
            raise _invalid(query, f"cannot parse {text!r}")
        field = "metadata" if match["key"] is not None else match["field"]
        if field not in _FIELDS:
            raise _invalid(query, f"the field {field!r} is not searchable")
        op = match["op"]
        value = match["sval"] if match["sval"] is not None else match["dval"]
        if value is None:
            value = match["num"]
        if op != ":" and field not in {"amount", "created"}:
            raise _invalid(query, f"{field} does not support {op}")
        if op != ":" and not re.fullmatch(r"-?\d+", value or ""):
            raise _invalid(query, f"{field} compares with a number")
        clauses.append(Clause(field, match["key"], op, (value or "").replace("\\'", "'"), bool(match["neg"])))
    return Query(tuple(clauses), any_of=connectives == {"OR"})
