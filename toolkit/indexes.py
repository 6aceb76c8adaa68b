"""The vector indexes a plan rebuilds: one `IndexSpec` per index that reads the vector column.

A spec keeps the original's parts (method, opclass, options, predicate) and its definition as
PostgreSQL deparsed it (`pg_get_indexdef`), with the part from `USING` on (`body`), which names
only columns: the same index can then be created on another table with the same columns (the
copy strategy) or, from its parts, on another column of the same table (the column strategy).
Each spec also carries the three names the index goes by: the original's, the one it has on the
new vectors until cutover, and the one the original gets after cutover.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from psycopg import sql

from toolkit import catalog
from toolkit.errors import BadInput
from toolkit.phases.ddl import options_clause, template

HNSW_MAX_DIMS = {"vector": 2000, "halfvec": 4000}
PG_IDENTIFIER_MAX = 63

_INDEX_REQUEST = re.compile(r"^(hnsw|ivfflat):(cosine|l2|ip)$")
_OPCLASS_BY_DISTANCE = {"cosine": "cosine_ops", "l2": "l2_ops", "ip": "ip_ops"}


def bounded_identifier(base: str, suffix: str) -> str:
    """`base__suffix`, shortened with a stable hash when it would pass PostgreSQL's 63-byte limit."""
    name = f"{base}__{suffix}"
    if len(name.encode()) <= PG_IDENTIFIER_MAX:
        return name
    import hashlib

    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    room = PG_IDENTIFIER_MAX - len(digest) - 1
    return name.encode()[:room].decode(errors="ignore") + "_" + digest


@dataclass
class IndexSpec:
    """One vector index to rebuild on the new vectors: the same kind as the original's."""

    method: str
    opclass: str
    options: dict[str, Any]
    predicate: str | None
    original_name: str | None  # None when asked for with --index and the original column has none
    shadow_name: str  # its name on the new vectors until cutover
    old_name: str | None  # the original's name after cutover (None without an original)
    definition: str | None = None  # pg_get_indexdef of the original, as planned
    body: str | None = None  # the definition from USING on: names columns only, never the table

    def render(self, table: sql.Composable, column: str, name: str) -> sql.Composed:
        """CREATE INDEX CONCURRENTLY of this kind on `column` of `table`, from the parts."""
        predicate = sql.SQL("WHERE {}").format(sql.SQL(self.predicate)) if self.predicate else sql.SQL("")
        return template("index_create", index=sql.Identifier(name), table=table, method=sql.Identifier(self.method),
                        column=sql.Identifier(column), opclass=sql.Identifier(self.opclass),
                        options=options_clause(self.options), predicate=predicate)

    def retarget(self, table: sql.Composable, name: str) -> sql.Composed:
        """CREATE INDEX CONCURRENTLY of exactly the original's definition, on another table with
        the same columns. The body is PostgreSQL's own deparse of the live index, not user input."""
        if self.body is None:
            raise ValueError(f"index {self.original_name or self.shadow_name} has no recorded definition")
        return sql.SQL("CREATE INDEX CONCURRENTLY {} ON {} {}").format(sql.Identifier(name), table,
                                                                     sql.SQL(self.body))

    def to_spec(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "IndexSpec":
        return cls(**{"predicate": None, "original_name": None, "old_name": None, **spec})


def plan_indexes(info: catalog.TableInfo, col: catalog.Column, dims: int, request: str | None, tag: str,
                 source_tag: str) -> list[IndexSpec]:
    """Every valid vector index that reads the column, or the one `--index METHOD:DISTANCE` asks for."""
    new_type = "halfvec" if col.base_type == "halfvec" else "vector"
    if request:
        match = _INDEX_REQUEST.match(request)
        if not match:
            raise BadInput(f"--index {request!r} must be METHOD:DISTANCE, e.g. hnsw:cosine (methods hnsw, ivfflat; "
                           "distances cosine, l2, ip)")
        method, distance = match.groups()
        specs = [IndexSpec(method=method, opclass=f"{new_type}_{_OPCLASS_BY_DISTANCE[distance]}",
                           options=dict(catalog.INDEX_DEFAULTS[method]), predicate=None, original_name=None,
                           shadow_name=bounded_identifier(f"{info.name}_{col.name}_idx", tag), old_name=None)]
    else:
        specs = [IndexSpec(method=i.method, opclass=i.opclass, options=dict(i.options), predicate=i.predicate,
                           original_name=i.name, shadow_name=bounded_identifier(i.name, tag),
                           old_name=bounded_identifier(i.name, "old_" + source_tag), definition=i.definition,
                           body=i.body)
                 for i in info.indexes_on(col.name) if i.valid]
    limit = HNSW_MAX_DIMS.get(new_type, 2000)
    for spec in specs:
        if dims > limit:
            raise BadInput(f"{spec.method} cannot index {new_type} above {limit} dimensions and {dims} were "
                           f"planned: plan --dimensions {limit} or fewer")
    return specs
