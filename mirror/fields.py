"""What a mirror holds, by name: its fields (``mirror fields``) and groups (``mirror names``).

A criterion, a ``--columns`` list or a ``--dataset`` needs names the user cannot guess:
the field paths of the archive's documents and the datasets, studies or collections
mirrored. Both are answered from the published Parquet projection (DuckDB), offline and
without the index database, for every source: what the projection holds is what a
selection can match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mirror.errors import MirrorError
from mirror.projection import LIST_OF, NULL, OBJECT, quote
from mirror.query import Projection, plain, projection_of

EXAMPLES = 3  # values shown per field: the most common ones
SHOWN_TEXT = 60  # characters of an example text (a description can be a page long)
_KINDS = ("text", "number", "boolean", "text[]", "number[]", "boolean[]", OBJECT, NULL)


def _source_spec(root: Path | str):
    from mirror.config import load_config
    from mirror.sources.base import spec_of

    return spec_of(load_config(Path(root)).source)


def _tables(projection: Projection, spec: Any, kind: str | None) -> list[str]:
    """The table of ``kind`` (any name ``--kind`` takes), or every kind's table."""
    if kind is not None:
        return [projection.table(kind)]
    return [k.table for k in spec.kinds if k.table in projection.schema]


# -- mirror fields ----------------------------------------------------------------------------

def describe_fields(root: Path | str, kind: str | None = None,
                    examples: int = EXAMPLES) -> dict[str, dict]:
    """Per table: its object count and, per field path, how many objects have it, the
    kinds of value it holds (with their counts) and its most common values."""
    spec = _source_spec(root)
    projection = projection_of(root)
    try:
        return {table: _describe_table(projection, table, examples)
                for table in _tables(projection, spec, kind)}
    finally:
        projection.close()


def _describe_table(projection: Projection, table: str, examples: int) -> dict:
    fields = projection.fields(table)
    paths = sorted(fields)
    tests = []
    for path in paths:
        columns = [quote(name) for name in fields[path].values()]
        tests.append(f"count(*) FILTER (WHERE {' OR '.join(f'{c} IS NOT NULL' for c in columns)})")
        tests += [f"count({quote(name)})" for name in fields[path].values()]
    counted = iter(_one(projection, f"SELECT {', '.join(tests)} FROM {quote(table)}")
                   if tests else ())
    out = []
    for path in paths:
        having = next(counted)
        types = {kind: next(counted) for kind in fields[path]}
        out.append({"field": path, "count": having,
                    "types": {k: types[k] for k in _KINDS if types.get(k)},
                    "examples": _examples(projection, table, fields[path], examples)})
    return {"objects": projection.schema[table]["rows"], "fields": out}


def _one(projection: Projection, sql: str) -> tuple:
    with projection.lock:
        return projection.execute(sql).fetchone()


def _examples(projection: Projection, table: str, kinds: dict[str, str], n: int) -> list:
    """The ``n`` most common values of a field (ties by value), from its scalar columns
    first, else the elements of its lists."""
    found: list = []
    for kind in _KINDS:
        name = kinds.get(kind)
        if name is None or kind in (OBJECT, NULL) or len(found) >= n:
            continue
        value = f"unnest({quote(name)})" if kind in LIST_OF.values() else quote(name)
        sql = (f"SELECT v FROM (SELECT {value} AS v FROM {quote(table)}) WHERE v IS NOT NULL "
               f"GROUP BY v ORDER BY count(*) DESC, v LIMIT {int(n - len(found))}")
        with projection.lock:
            found += [_shown(plain(r[0])) for r in projection.execute(sql).fetchall()]
    return found


def _shown(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SHOWN_TEXT:
        return value[:SHOWN_TEXT - 1] + "…"
    return value


def fields_lines(data: dict[str, dict]) -> list[str]:
    """``mirror fields`` as text: a heading per table, a line per field."""
    lines = []
    for table, entry in data.items():
        lines.append(f"{table}: {entry['objects']} object(s), {len(entry['fields'])} field(s)")
        width = min(40, max((len(f["field"]) for f in entry["fields"]), default=0))
        count_width = len(str(entry["objects"]))
        for field in entry["fields"]:
            types = field["types"]
            kinds = (", ".join(types) if len(types) == 1
                     else ", ".join(f"{k} {n}" for k, n in types.items()))
            shown = ", ".join(json.dumps(v, ensure_ascii=False) for v in field["examples"])
            lines.append(f"  {field['field']:<{width}}  {field['count']:>{count_width}}  "
                         f"{kinds}" + (f"  e.g. {shown}" if shown else ""))
    return lines


# -- mirror names -----------------------------------------------------------------------------

def group_names(root: Path | str, label: str | None = None) -> dict[str, list[dict]]:
    """The groups of the mirror's objects its source declares (``SourceSpec.groups``:
    ISIC's datasets and studies, TCIA's and IDC's collections...), each with its name and,
    where the source says how, how many objects of the main kind it holds."""
    spec = _source_spec(root)
    groups = {g[0]: g for g in spec.groups}
    if label is not None and label not in groups:
        known = ", ".join(groups) or "none"
        raise MirrorError(f"a {spec.title} mirror has no groups called {label!r}; it has: "
                          f"{known}")
    main = spec.kind(spec.main_kind).table
    projection = projection_of(root)
    try:
        return {name: _group(projection, main, *groups[name]) for name in groups
                if (label is None or name == label) and groups[name][1] in projection.schema}
    finally:
        projection.close()


def _group(projection: Projection, main: str, label: str, table: str, field: str,
           members: str | None) -> list[dict]:
    column = projection.fields(table).get(field, {}).get("text")
    if table == main:  # the distinct values of a field of the main kind
        if column is None:
            return []
        sql = (f"SELECT {quote(column)}, count(*) FROM {quote(table)} WHERE {quote(column)} "
               f"IS NOT NULL GROUP BY 1 ORDER BY 1")
        with projection.lock:
            rows = projection.execute(sql).fetchall()
        return [{"name": name, main: n} for name, n in rows]
    name = quote(column) if column else "NULL"
    member = projection.fields(main).get(members or "", {}).get("text")
    if member is None:
        sql = f'SELECT "_id", {name} FROM {quote(table)} ORDER BY 2, 1'
    else:
        sql = (f'SELECT g."_id", {name}, (SELECT count(*) FROM {quote(main)} m '
               f'WHERE m.{quote(member)} = g."_id") FROM {quote(table)} g ORDER BY 2, 1')
    with projection.lock:
        rows = projection.execute(sql).fetchall()
    return [{"_id": r[0], "name": r[1], **({main: r[2]} if member else {})} for r in rows]


def names_lines(data: dict[str, list[dict]]) -> list[str]:
    """``mirror names`` as text: a heading per group, a line per member."""
    lines = []
    for label, rows in data.items():
        lines.append(f"{label}: {len(rows)}")
        for row in rows:
            counts = [f"{k}: {v}" for k, v in row.items() if k not in ("_id", "name")]
            ident = f"{row['_id']}  " if "_id" in row else ""
            lines.append(f"  {ident}{row['name'] if row['name'] is not None else '-'}"
                         + (f"  ({', '.join(counts)})" if counts else ""))
    return lines
