"""The archive's image search language, parsed and evaluated the way the server does.

The server (``isic/core/dsl.py``) builds one pyparsing grammar and two back ends from it:
Django ``Q`` objects for the result rows and an Elasticsearch query for ``search/size/`` and
``facets/``. pyparsing is not a dependency here, so this is a hand-written recursive-descent
parser for the same grammar (research note ``isic_v2_api.md`` §5), accepting and rejecting
the same strings, and one evaluator with a ``mode`` for the two back ends, which differ only
on wildcards (``f:*abc*`` and ``-f:*abc``).

Grammar::

    query   := or_expr
    or_expr := and_expr ("OR" and_expr)*
    and_expr:= operand ("AND" operand)*
    operand := term+ | "(" or_expr ")"
    term    := ["-"] FIELD ":" value
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

BOOLEAN_FIELDS = ("personal_hx_mm", "family_hx_mm", "melanocytic", "mel_ulcer",
                  "concomitant_biopsy")
KEYWORD_FIELDS = (
    "sex", "diagnosis_confirm_type", "image_type", "dermoscopic_type", "tbp_tile_type",
    "mel_mitotic_index", "anatom_site_special", "patient_id", "lesion_id", "rcm_case_id",
    "image_manipulation", "fitzpatrick_skin_type",
    *(f"diagnosis_{n}" for n in range(1, 6)), *(f"anatom_site_{n}" for n in range(1, 6)),
)
NUMBER_FIELDS = ("clin_size_long_diam_mm", "mel_thick_mm")
# Searchable under isic-metadata 5.1.0 (the server's pin) but stored nowhere: the query
# parses, then the database lookup fails (HTTP 500 on the row path).
UNSTORED_FIELDS = {"blurry": "boolean", "hairy": "boolean", "marker_pen": "boolean",
                   "color_tint": "keyword"}

FIELD_TYPES: dict[str, str] = {
    "isic_id": "keyword", "public": "boolean", "age_approx": "number",
    "copyright_license": "keyword",
    **dict.fromkeys(BOOLEAN_FIELDS, "boolean"), **dict.fromkeys(KEYWORD_FIELDS, "keyword"),
    **dict.fromkeys(NUMBER_FIELDS, "number"), **UNSTORED_FIELDS,
}
# pyparsing's Keyword: a field name matches only as a whole word of these characters.
IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
WHITESPACE = " \t\n\r"
WORD = re.compile(r"[A-Za-z0-9*_-]+")
QUOTED = re.compile(r'"([^"\n\r]*)"')
NUMBER = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
BOOL = re.compile(r"true|false|\*")
QUOTED_ESCAPES = {r"\t": "\t", r"\n": "\n", r"\f": "\f", r"\r": "\r"}
IMAGE_TYPE_ALIASES = {"clinical": "clinical: close-up", "overview": "clinical: overview"}


class SearchParseError(ValueError):
    """The query does not parse (the server's 400 ``Could not parse search query.``)."""


class UnstoredFieldError(Exception):
    """A field the registry makes searchable but no database column holds (a server 500)."""


@dataclass(frozen=True)
class Term:
    field: str
    negated: bool
    kind: str  # "str", "bool", "number", "range"
    value: object  # str, bool or "*", number or "*", or (lo, hi, lo_inclusive, hi_inclusive)


@dataclass(frozen=True)
class Node:
    op: str  # "and" or "or"
    children: tuple


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def fail(self) -> SearchParseError:
        return SearchParseError(f"cannot parse search query at character {self.pos}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in WHITESPACE:
            self.pos += 1

    def literal(self, token: str) -> bool:
        self.skip()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def keyword(self, word: str) -> bool:
        self.skip()
        start, end = self.pos, self.pos + len(word)
        if not self.text.startswith(word, start):
            return False
        if start > 0 and self.text[start - 1] in IDENT_CHARS:
            return False
        if end < len(self.text) and self.text[end] in IDENT_CHARS:
            return False
        self.pos = end
        return True

    def regex(self, pattern: re.Pattern) -> re.Match | None:
        self.skip()
        match = pattern.match(self.text, self.pos)
        if match:
            self.pos = match.end()
        return match

    def parse(self) -> Term | Node:
        node = self.or_expr()
        self.skip()
        if self.pos != len(self.text):
            raise self.fail()
        return node

    def or_expr(self) -> Term | Node:
        parts = [self.and_expr()]
        while self.keyword("OR"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Node("or", tuple(parts))

    def and_expr(self) -> Term | Node:
        parts = [self.operand()]
        while self.keyword("AND"):
            parts.append(self.operand())
        return parts[0] if len(parts) == 1 else Node("and", tuple(parts))

    def operand(self) -> Term | Node:
        start = self.pos
        if self.literal("("):
            inner = self.or_expr()
            if not self.literal(")"):
                raise self.fail()
            return inner
        self.pos = start
        terms = []
        while (term := self.term()) is not None:
            terms.append(term)
        if not terms:
            raise self.fail()
        return terms[0] if len(terms) == 1 else Node("and", tuple(terms))

    def term(self) -> Term | None:
        """One ``[-]field:value``, or None (position restored) when there is none here."""
        start = self.pos
        negated = self.literal("-")
        self.skip()
        name = next((f for f in _FIELDS_LONGEST_FIRST if self.keyword(f)), None)
        if name is None or not self.literal(":"):
            self.pos = start
            return None
        kind = FIELD_TYPES[name]
        value = (self.str_value() if kind == "keyword" else
                 self.bool_value() if kind == "boolean" else self.number_or_range())
        if value is None:
            self.pos = start
            return None
        return Term(name, negated, *value)

    def str_value(self) -> tuple[str, object] | None:
        self.skip()
        if match := WORD.match(self.text, self.pos):
            self.pos = match.end()
            return "str", match.group()
        if match := QUOTED.match(self.text, self.pos):
            self.pos = match.end()
            text = re.sub(r"\\[tnfr]", lambda m: QUOTED_ESCAPES[m.group()], match.group(1))
            return "str", text
        return None

    def bool_value(self) -> tuple[str, object] | None:
        match = self.regex(BOOL)
        if match is None:
            return None
        word = match.group()
        return "bool", "*" if word == "*" else word == "true"

    def number(self) -> object | None:
        if self.literal("*"):
            return "*"
        match = self.regex(NUMBER)
        if match is None:
            return None
        text = match.group()
        return float(text) if any(c in text for c in ".eE") else int(text)

    def number_or_range(self) -> tuple[str, object] | None:
        start = self.pos
        self.skip()
        opening = self.text[self.pos:self.pos + 1]
        if opening in ("[", "{"):
            self.pos += 1
            lo = self.number()
            if lo is not None and self.literal("TO"):
                hi = self.number()
                self.skip()
                closing = self.text[self.pos:self.pos + 1]
                if hi is not None and closing in ("]", "}"):
                    self.pos += 1
                    return "range", (lo, hi, opening == "[", closing == "]")
            self.pos = start
            return None
        value = self.number()
        return None if value is None else ("number", value)


_FIELDS_LONGEST_FIRST = sorted(FIELD_TYPES, key=len, reverse=True)


@lru_cache(maxsize=1000)
def parse(query: str) -> Term | Node | None:
    """The parse tree of ``query`` (stripped; empty means no filter), or SearchParseError."""
    query = query.strip()
    if not query:
        return None
    return _Parser(query).parse()


# -- evaluation --------------------------------------------------------------------------------

def matches(tree: Term | Node | None, record: dict, mode: str = "sql") -> bool:
    """Whether ``record`` (flat field -> value, None or absent when unset) satisfies ``tree``.

    ``mode`` is ``"sql"`` (the result rows) or ``"es"`` (size, facets): they differ on
    ``f:*abc*`` (SQL: ends with ``abc*``; ES: contains ``abc``) and ``-f:*abc`` (SQL: does
    not *start* with ``abc``, a server bug; ES: does not end with it).
    """
    if tree is None:
        return True
    if isinstance(tree, Node):
        results = (matches(child, record, mode) for child in tree.children)
        return all(results) if tree.op == "and" else any(results)
    if tree.field in UNSTORED_FIELDS and mode == "sql":
        raise UnstoredFieldError(tree.field)
    value = record.get(tree.field)
    hit = _positive(tree, value, mode)
    if not tree.negated:
        return hit
    # SQL: NOT(cond) OR field IS NULL; ES: must_not (missing fields match too). The same,
    # except that SQL negates *abc with startswith, handled in _positive.
    return value is None or not hit


def _positive(term: Term, value: object, mode: str) -> bool:
    if term.kind == "range":
        lo, hi, lo_inclusive, hi_inclusive = term.value
        if value is None:
            return False
        if lo == "*" and hi == "*":
            return True
        number = _as_number(value)
        if lo != "*" and not (number >= lo if lo_inclusive else number > lo):
            return False
        return hi == "*" or (number <= hi if hi_inclusive else number < hi)
    wanted = term.value
    if wanted == "*":
        return value is not None
    if value is None:
        return False
    if term.kind == "bool":
        return value is wanted
    if term.kind == "number":
        return _as_number(value) == wanted
    if term.field == "image_type":
        wanted = IMAGE_TYPE_ALIASES.get(wanted, wanted)
    text = str(value)
    if mode == "es":
        if wanted.startswith("*") or wanted.endswith("*"):
            return _wildcard(wanted).fullmatch(text) is not None
        return text == wanted
    if wanted.startswith("*"):
        rest = wanted[1:]
        return text.startswith(rest) if term.negated else text.endswith(rest)
    if wanted.endswith("*"):
        return text.startswith(wanted[:-1])
    return text == wanted


def _as_number(value: object) -> float:
    if isinstance(value, bool):
        return float(value)
    return float(Decimal(value)) if isinstance(value, str) else float(value)


@lru_cache(maxsize=256)
def _wildcard(pattern: str) -> re.Pattern:
    """An Elasticsearch ``wildcard`` pattern (``*`` any run, ``?`` one character)."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)
