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


def prefixed_identifier(prefix: str, base: str) -> str:
    """`prefix__base`, shortened with a stable hash when it would pass PostgreSQL's 63-byte limit.
    The names reembed gives indexes start with the prefix, never with the original's name: a client
    that finds its index by a name prefix (Supabase vecs looks for `ix_vector%`) finds only one."""
    return _within_limit(f"{prefix}__{base}")


def bounded_identifier(base: str, suffix: str) -> str:
    """`base__suffix`, shortened with a stable hash when it would pass PostgreSQL's 63-byte limit."""
    return _within_limit(f"{base}__{suffix}")


def _within_limit(name: str) -> str:
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
    key: str | None = None  # the original's first key as deparsed: the column, or an expression of it
    unique: bool = False

    @property
    def orders_by_distance(self) -> bool:
        """A vector index: it serves ORDER BY <key> <distance> $1 (verify checks the planner uses it)."""
        return self.method in catalog.VECTOR_METHODS

    def on_column(self, table: sql.Composable, column: str, new_column: str, name: str, *,
                  only: bool = False) -> sql.Composed:
        """CREATE INDEX CONCURRENTLY of exactly the original's definition (any method, expression,
        INCLUDE, predicate, options) on the same table, reading `new_column` wherever it read
        `column`; from the parts when there is no original (`--index`). `only`: CREATE INDEX ... ON
        ONLY, the (not yet valid) index of a partitioned table its partitions' indexes attach to."""
        if self.body is not None:
            body: sql.Composable = sql.SQL(rename_column(self.body, column, new_column))
        else:
            predicate = sql.SQL(" WHERE {}").format(sql.SQL(self.predicate)) if self.predicate else sql.SQL("")
            body = sql.SQL("USING {} ({} {}) {}{}").format(
                sql.Identifier(self.method), sql.Identifier(new_column), sql.Identifier(self.opclass),
                options_clause(self.options), predicate)
        return self._create(table, name, body, only)

    def retarget(self, table: sql.Composable, name: str, *, only: bool = False) -> sql.Composed:
        """CREATE INDEX CONCURRENTLY of exactly the original's definition, on another table with
        the same columns. The body is PostgreSQL's own deparse of the live index, not user input."""
        if self.body is None:
            raise ValueError(f"index {self.original_name or self.shadow_name} has no recorded definition")
        return self._create(table, name, sql.SQL(self.body), only)

    def _create(self, table: sql.Composable, name: str, body: sql.Composable, only: bool) -> sql.Composed:
        return template("index_create", unique=sql.SQL("UNIQUE ") if self.unique else sql.SQL(""),
                        concurrently=sql.SQL("") if only else sql.SQL("CONCURRENTLY "), index=sql.Identifier(name),
                        only=sql.SQL("ONLY ") if only else sql.SQL(""), table=table, body=body)

    def to_spec(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "IndexSpec":
        return cls(**{"predicate": None, "original_name": None, "old_name": None, **spec})


def plan_indexes(info: catalog.TableInfo, col: catalog.Column, dims: int, request: str | None, tag: str,
                 source_tag: str, new_base: str | None = None) -> list[IndexSpec]:
    """Every valid index that reads the column, or the one `--index METHOD:DISTANCE` asks for, as
    it must be built on the new vectors: `new_base` (vector | halfvec) and `dims` when --dimensions
    changes them (the opclass of a key on the column itself follows the new type; a cast inside an
    expression keeps its type and takes the new dimension)."""
    new_base = new_base or ("halfvec" if col.base_type == "halfvec" else "vector")
    if request:
        match = _INDEX_REQUEST.match(request)
        if not match:
            raise BadInput(f"--index {request!r} must be METHOD:DISTANCE, e.g. hnsw:cosine (methods hnsw, ivfflat; "
                           "distances cosine, l2, ip)")
        method, distance = match.groups()
        specs = [IndexSpec(method=method, opclass=f"{new_base}_{_OPCLASS_BY_DISTANCE[distance]}",
                           options=dict(catalog.INDEX_DEFAULTS[method]), predicate=None, original_name=None,
                           shadow_name=bounded_identifier(f"{info.name}_{col.name}_idx", tag), old_name=None)]
    else:
        specs = []
        for i in _serving_first(info.indexes_on(col.name), col.name):
            if not i.valid:
                continue
            plain = i.column == col.name
            opclass = _retyped_opclass(i.opclass, new_base) if plain else i.opclass
            body = i.body
            if body is not None and (dims != col.dimensions or opclass != i.opclass):
                body = retype_body(body, col.dimensions, dims, i.opclass, opclass)
            specs.append(IndexSpec(method=i.method, opclass=opclass, options=dict(i.options), predicate=i.predicate,
                                   original_name=i.name, shadow_name=prefixed_identifier(tag, i.name),
                                   old_name=prefixed_identifier("old_" + source_tag, i.name), definition=i.definition,
                                   body=body, key=i.key, unique=i.unique))
            _check_key_size(i.name, i.method, new_base if plain else i.key_type.split("(")[0],
                            dims if plain or f"({col.dimensions})" in i.key_type else None)
    if request:
        _check_key_size(specs[0].shadow_name, specs[0].method, new_base, dims)
    if request and col.dimensions is None:
        raise BadInput(f"column {col.name!r} is an unsized {col.base_type}: a vector index needs a dimension; declare "
                       f"it ({col.base_type}({dims})) or index an expression that casts it, then plan again")
    return specs


def _check_key_size(name: str, method: str, base: str, dims: int | None) -> None:
    """HNSW and IVFFlat hold at most 2,000 dimensions as vector, 4,000 as halfvec."""
    limit = HNSW_MAX_DIMS.get(base)
    if method in catalog.VECTOR_METHODS and dims is not None and limit is not None and dims > limit:
        raise BadInput(f"{method} cannot index {base} above {limit} dimensions and {dims} were planned (index "
                       f"{name}): plan --dimensions {limit} or fewer" + (
                           ", or let the new column be halfvec" if base == "vector" else ""))


def _retyped_opclass(opclass: str, base: str) -> str:
    """vector_cosine_ops <-> halfvec_cosine_ops (and l2, ip, l1): the opclass for `base`."""
    for prefix in ("vector_", "halfvec_"):
        if opclass.startswith(prefix) and opclass.endswith("_ops"):
            return base + "_" + opclass[len(prefix):]
    return opclass


def retype_body(body: str, old_dims: int | None, new_dims: int, old_opclass: str, new_opclass: str) -> str:
    """An index body (PostgreSQL's deparse) for vectors of `new_dims`: every cast to vector(old) or
    halfvec(old) takes the new dimension, and the column's own opclass becomes `new_opclass`."""
    if old_dims is not None and old_dims != new_dims:
        body = re.sub(rf"::(vector|halfvec)\({old_dims}\)", rf"::\g<1>({new_dims})", body)
    if new_opclass != old_opclass:
        body = re.sub(rf"(?<![\w\"]){re.escape(old_opclass)}(?![\w\"])", new_opclass, body)
    return body


def _serving_first(found: list[catalog.VectorIndex], column: str) -> list[catalog.VectorIndex]:
    """The index serving the application's `ORDER BY column <op> $1` first (verify measures its
    recall), then the other vector indexes, then the rest; by name within each."""
    def rank(i: catalog.VectorIndex) -> tuple[int, int, str]:
        vector = i.method in catalog.VECTOR_METHODS
        return (0 if vector and i.column == column else 1 if vector else 2, 0 if i.predicate is None else 1, i.name)
    return sorted(found, key=rank)


_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*|::|\s+|.""", re.DOTALL)


def rename_column(text: str, old: str, new: str) -> str:
    """`text` (SQL PostgreSQL deparsed: an index body, a predicate) with every reference to column
    `old` made to `new`. Only identifier tokens are touched: not string literals, not a function
    of that name (followed by `(`), not a type after `::`, not a qualified name's part; the
    options list (`WITH (...)`) is left alone."""
    out: list[str] = []
    previous = ""  # the last token that was not blank
    tokens = _TOKEN.findall(text)
    depth_of_with = None  # paren depth at which a WITH (...) options list opened
    depth = 0
    for n, token in enumerate(tokens):
        following = next((t for t in tokens[n + 1:] if not t.isspace()), "")
        if token == "(":
            depth += 1
            if previous.upper() == "WITH" and depth_of_with is None:
                depth_of_with = depth
        elif token == ")":
            if depth_of_with == depth:
                depth_of_with = None
            depth -= 1
        elif depth_of_with is None and previous not in ("::", ".") and following not in ("(", "."):
            if token == old and re.fullmatch(r"[a-z_][a-z0-9_$]*", token) or token == '"' + old.replace('"', '""') + '"':
                token = sql.Identifier(new).as_string(None)
        out.append(token)
        if not token.isspace():
            previous = token
    return "".join(out)


@dataclass
class CarriedIndex:
    """One index of the original table that the copy strategy builds on the copy (every index:
    the key, unique, btree, gin, the vector ones), from the original's own definition."""

    original_name: str
    shadow_name: str  # on the copy until cutover
    old_name: str  # the original's name after cutover
    body: str  # `USING ...` as PostgreSQL deparsed the original
    unique: bool = False
    constraint: str | None = None  # "p" primary key, "u" unique constraint, None: a plain index
    deferrable: str = ""  # "", "DEFERRABLE" or "DEFERRABLE INITIALLY DEFERRED" (constraints only)

    def create(self, table: sql.Composable, name: str, concurrently: bool = True) -> sql.Composed:
        return sql.SQL("CREATE {}INDEX {}{} ON {} {}").format(
            sql.SQL("UNIQUE " if self.unique else ""), sql.SQL("CONCURRENTLY " if concurrently else ""),
            sql.Identifier(name), table, sql.SQL(self.body))

    def to_spec(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "CarriedIndex":
        return cls(**spec)
