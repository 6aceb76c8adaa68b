"""The Plan: one migration of one column, validated against the live table, kept as TOML.

The plan file is for review (commit it beside the application); the registered copy in
`reembed.plans` is what commands act on. A file edited by hand that no longer matches the
registry, or a table whose shape changed since planning, is refused with the difference named.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import tomli_w
from psycopg import sql

from toolkit import __version__, access, catalog
from toolkit.errors import BadInput
from toolkit.indexes import (HNSW_MAX_DIMS, PG_IDENTIFIER_MAX, CarriedIndex, IndexSpec,  # noqa: F401 (re-exported)
                             bounded_identifier, plan_indexes)
from toolkit.providers.base import ModelRef
from toolkit.providers.models import RETIRED, model_info, model_tag
from toolkit.state import PlanRecord, get_plan

DEFAULT_TARGET = "gemini:gemini-embedding-001"
DEFAULT_SOURCE = "ollama:nomic-embed-text"
TEXT_JOINER = "\n\n"
DEFAULT_STRATEGY = "column"  # what a plan file or registry row written before strategies existed used
_PLAN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

DOCUMENT_TASK = "RETRIEVAL_DOCUMENT"
QUERY_TASK = "RETRIEVAL_QUERY"


@dataclass
class CopySpec:
    """What the copy strategy creates and renames: the copy (until cutover), the original's name
    after cutover, and every index of the original to build on the copy."""

    table: str
    old_table: str
    indexes: list[CarriedIndex] = field(default_factory=list)

    def to_spec(self) -> dict[str, Any]:
        return {"table": self.table, "old_table": self.old_table, "indexes": [i.to_spec() for i in self.indexes]}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "CopySpec":
        return cls(table=spec["table"], old_table=spec["old_table"],
                   indexes=[CarriedIndex.from_spec(i) for i in spec.get("indexes", [])])


@dataclass
class Estimate:
    rows_total: int
    rows_to_embed: int
    rows_empty: int
    http_requests: int
    quota_requests: int
    tokens: int
    rpm: int
    tpm: int
    minutes_at_quota: float
    cost_usd: float
    shadow_column_bytes: int
    shadow_index_bytes: int
    rpd: int = 0  # texts per day; 0: no daily cap assumed
    days_at_quota: float = 0.0  # when the daily cap binds: the days it takes (else 0)
    batch_cost_usd: float = 0.0  # through the Batch API (`run --batch-api`), at its discount
    batch_jobs: int = 0


@dataclass
class Plan:
    name: str
    table_schema: str
    table_name: str
    primary_key: list[str]
    column: str
    column_type: str
    column_not_null: bool
    shadow_column: str
    old_column: str
    text_columns: list[str]
    title_column: str | None
    source: str
    target: str
    dimensions: int
    indexes: list[IndexSpec]  # every vector index that reads the column, each rebuilt on the new vectors
    table_fingerprint: str
    estimate: Estimate | None = None
    strategy: str = DEFAULT_STRATEGY  # where the new vectors live until cutover (toolkit.strategies)
    copy: CopySpec | None = None  # the copy strategy's objects
    choice: dict[str, Any] | None = None  # how the strategy was chosen (toolkit.strategies.choice)
    document_task: str = DOCUMENT_TASK
    query_task: str = QUERY_TASK
    text_joiner: str = TEXT_JOINER
    # Columns a generated text or title column is computed from: a change of one of them changes
    # what is embedded without an UPDATE of the generated column (which triggers see as NULL
    # when it is VIRTUAL).
    text_inputs: list[str] = field(default_factory=list)
    # The new column's type when --dimensions changes it: vector(N), or halfvec(N) above the
    # 2,000 dimensions an HNSW or IVFFlat index can hold as vector. None: the original's type.
    new_type: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    reembed_version: str = __version__

    # -- names, as SQL composables (never strings pasted into SQL) --------------------------
    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(self.table_schema, self.table_name)

    @property
    def table_display(self) -> str:
        return f"{self.table_schema}.{self.table_name}"

    @property
    def source_ref(self) -> ModelRef:
        return ModelRef.parse(self.source)

    @property
    def target_ref(self) -> ModelRef:
        return ModelRef.parse(self.target)

    @property
    def vector_base(self) -> str:
        """`vector` or `halfvec`: the element type of the original column."""
        return "halfvec" if self.column_type.startswith("halfvec") else "vector"

    @property
    def new_column_type(self) -> str:
        """The declared type of the column the new vectors go to: the original's, at the planned
        dimensions (an unsized column, langchain's `vector`, stays unsized, so the swap hands the
        application back the type it declared); with new dimensions, what `plan` chose and recorded."""
        if self.new_type:
            return self.new_type
        if "(" not in self.column_type:
            return self.column_type
        return f"{self.vector_base}({self.dimensions})"

    @property
    def new_vector_base(self) -> str:
        """`vector` or `halfvec`: the element type of the new vectors."""
        return self.new_column_type.split("(")[0]

    @property
    def source_dimensions(self) -> int:
        """The dimension of the source model's vectors: the original column's."""
        inside = self.column_type.partition("(")[2].rstrip(")")
        return int(inside) if inside.isdigit() else self.dimensions

    @property
    def tracked_columns(self) -> list[str]:
        """Columns whose change makes a row's vector stale."""
        return self.text_columns + ([self.title_column] if self.title_column else [])

    @property
    def watched_columns(self) -> list[str]:
        """What change tracking compares, OLD against NEW: the text and title, what generated ones are
        computed from, and the key."""
        return list(dict.fromkeys(self.tracked_columns + self.text_inputs + self.primary_key))

    @property
    def shape_columns(self) -> list[str]:
        """The columns whose types the table's fingerprint covers."""
        return list(dict.fromkeys([self.column] + self.tracked_columns + self.text_inputs))

    def text_expression(self, alias: str | None = None) -> sql.Composable:
        """The text sent to the model: the column as stored, or several joined by a blank line."""
        cols = [sql.Identifier(alias, c) if alias else sql.Identifier(c) for c in self.text_columns]
        if len(cols) == 1:
            return cols[0]
        return sql.SQL("concat_ws({}, {})").format(sql.Literal(self.text_joiner), sql.SQL(", ").join(cols))

    def title_expression(self, alias: str | None = None) -> sql.Composable:
        if not self.title_column:
            return sql.SQL("NULL::text")
        return sql.Identifier(alias, self.title_column) if alias else sql.Identifier(self.title_column)

    def text_hash_expression(self, alias: str | None = None) -> sql.Composable:
        """md5 of exactly what is embedded (text and title); the write guard and freshness compare it."""
        return sql.SQL("md5(row({}, {})::text)").format(self.text_expression(alias), self.title_expression(alias))

    # -- serialization ------------------------------------------------------------------------
    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": self.name,
            "strategy": self.strategy,
            "created_at": self.created_at,
            "reembed_version": self.reembed_version,
            "table": {"schema": self.table_schema, "name": self.table_name, "primary_key": self.primary_key,
                      "fingerprint": self.table_fingerprint},
            "column": {"name": self.column, "type": self.column_type, "not_null": self.column_not_null,
                       "shadow": self.shadow_column, "old": self.old_column,
                       **({"new_type": self.new_type} if self.new_type else {})},
            "text": {"columns": self.text_columns, "joiner": self.text_joiner},
            "source": {"model": self.source},
            "target": {"model": self.target, "dimensions": self.dimensions, "document_task": self.document_task,
                       "query_task": self.query_task},
        }
        if self.title_column:
            spec["text"]["title"] = self.title_column
        if self.text_inputs:
            spec["text"]["inputs"] = self.text_inputs
        if self.indexes:
            spec["indexes"] = [i.to_spec() for i in self.indexes]
        if self.copy:
            spec["copy"] = self.copy.to_spec()
        if self.choice:
            spec["choice"] = self.choice
        if self.estimate:
            spec["estimate"] = asdict(self.estimate)
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Plan":
        try:
            # Plans written before the index list held one `index` table (or none).
            indexes = spec.get("indexes") or ([spec["index"]] if spec.get("index") else [])
            estimate = spec.get("estimate")
            return cls(
                name=spec["name"],
                table_schema=spec["table"]["schema"], table_name=spec["table"]["name"],
                primary_key=list(spec["table"]["primary_key"]), table_fingerprint=spec["table"]["fingerprint"],
                column=spec["column"]["name"], column_type=spec["column"]["type"], new_type=spec["column"].get("new_type"),
                column_not_null=bool(spec["column"]["not_null"]),
                shadow_column=spec["column"]["shadow"], old_column=spec["column"]["old"],
                text_columns=list(spec["text"]["columns"]), title_column=spec["text"].get("title"),
                text_joiner=spec["text"].get("joiner", TEXT_JOINER), text_inputs=list(spec["text"].get("inputs", [])),
                source=spec["source"]["model"], target=spec["target"]["model"],
                dimensions=int(spec["target"]["dimensions"]),
                document_task=spec["target"].get("document_task", DOCUMENT_TASK),
                query_task=spec["target"].get("query_task", QUERY_TASK),
                indexes=[IndexSpec.from_spec(i) for i in indexes],
                estimate=Estimate(**estimate) if estimate else None,
                strategy=spec.get("strategy", DEFAULT_STRATEGY),
                copy=CopySpec.from_spec(spec["copy"]) if spec.get("copy") else None,
                choice=spec.get("choice"),
                created_at=spec.get("created_at", ""), reembed_version=spec.get("reembed_version", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"plan is malformed: {type(exc).__name__} {exc}") from None

    def to_toml(self) -> str:
        header = (f"# reembed plan {self.name!r}: re-embed {self.table_display}.{self.column} "
                  f"from {self.source} to {self.target} ({self.dimensions} dims).\n"
                  "# Review it and commit it beside your application; `reembed run` acts on the registered copy.\n")
        return header + tomli_w.dumps(self.to_spec())

    def write(self, path: Path) -> None:
        path.write_text(self.to_toml())


def read_plan_file(path: Path) -> Plan:
    try:
        return Plan.from_spec(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"plan file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise BadInput(f"cannot read plan file {path}: {exc.strerror}") from None


def load(conn: psycopg.Connection, plan_ref: str) -> tuple[Plan, PlanRecord]:
    """The registered plan named by `plan_ref` (a name or a plan file), checked against the table.

    A plan file must say exactly what the registry says; a table whose key or columns changed
    since planning is refused, naming the difference.
    """
    path = Path(plan_ref)
    file_plan = read_plan_file(path) if plan_ref.endswith(".toml") or path.is_file() else None
    record = get_plan(conn, file_plan.name if file_plan else plan_ref)
    plan = Plan.from_spec(record.spec)
    if file_plan is not None:
        differences = _differences(plan.to_spec(), file_plan.to_spec())
        if differences:
            raise BadInput(f"plan file {path} differs from the registered plan {plan.name!r}: {'; '.join(differences)}")
    check_table_unchanged(conn, plan, record.phase)
    return plan, record


def expected_column_type(plan: Plan, phase: str) -> str:
    """The type the column named `plan.column` has in `phase` when nobody but reembed touched it:
    after cutover it is the column reembed created, of the plan's new type."""
    from toolkit.strategies.base import SWAPPED_PHASES

    return plan.new_column_type if phase in SWAPPED_PHASES else plan.column_type


def check_table_unchanged(conn: psycopg.Connection, plan: Plan, phase: str = "planned") -> None:
    """Refuse when the table's key or planned columns no longer look as they did at planning.
    What reembed itself did (the swap) is never reported as a change of the user's table."""
    try:
        info = catalog.load_shape(conn, *_oid_of(conn, plan))
    except BadInput:
        raise BadInput(f"table {plan.table_display} of plan {plan.name!r} no longer exists") from None
    expected = plan.table_fingerprint
    columns = plan.shape_columns
    column = info.column(plan.column)
    as_planned = ({plan.column: plan.column_type}
                  if column is not None and column.type == expected_column_type(plan, phase) else {})
    if info.fingerprint(columns, as_planned) != expected:
        raise BadInput(f"table {plan.table_display} changed since plan {plan.name!r} was made: "
                       + "; ".join(_shape_differences(plan, info, phase)))


def _shape_differences(plan: Plan, info: catalog.TableInfo, phase: str) -> list[str]:
    """What the plan recorded against what the table has now, named one by one."""
    out = []
    now_key = [c.name for c in info.primary_key]
    if now_key != plan.primary_key:
        out.append(f"primary key was {plan.primary_key}, now {now_key}")
    column = info.column(plan.column)
    wanted = expected_column_type(plan, phase)
    if column is None or column.type != wanted:
        out.append(f"column {plan.column} was {wanted}, now {column.type if column else 'missing'}")
    for name in plan.tracked_columns:
        text = info.column(name)
        if text is None:
            out.append(f"text column {name} is missing")
        elif not text.is_text:
            out.append(f"text column {name} is now {text.type}")
    if not out:
        shape = info.shape(columns := plan.shape_columns)
        out.append(f"a key or text column changed type: now primary key {shape['primary_key']}, "
                   f"columns {shape['columns']}")
    return out


def _oid_of(conn: psycopg.Connection, plan: Plan) -> tuple[int, str, str]:
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s", (plan.table_schema, plan.table_name)).fetchone()
    if row is None:
        raise BadInput(f"table {plan.table_display} does not exist")
    return row[0], plan.table_schema, plan.table_name


def _differences(registered: dict[str, Any], edited: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(registered) | set(edited)):
        if key in ("estimate", "created_at", "choice"):
            continue
        a, b = registered.get(key), edited.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} is {b!r} in the file but {a!r} registered")
    return out


# -- building a plan from the live table ---------------------------------------------------------

def parse_model(spec: str) -> ModelRef:
    """PROVIDER:MODEL; a bare retired Gemini name still gets the message that names its successor."""
    if ":" not in spec and f"gemini:{spec.strip()}" in RETIRED:
        raise BadInput(RETIRED[f"gemini:{spec.strip()}"])
    return ModelRef.parse(spec)


def validate_plan_name(name: str) -> str:
    if not _PLAN_NAME.match(name):
        raise BadInput(f"plan name {name!r} must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return name


def build(conn: psycopg.Connection, *, table: str, column: str, text_columns: list[str], title_column: str | None,
          target: str, source: str, dimensions: int | None, name: str | None,
          index_request: str | None = None, strategy: str | None = None) -> tuple[Plan, catalog.TableInfo]:
    """Validate every input against the live table and return the plan; changes nothing.

    `strategy` None takes the recommended one (toolkit.strategies.choice); the plan records the
    comparison. The strategy refuses here, naming it, whatever it could not carry to cutover."""
    from toolkit.strategies import strategy_named
    from toolkit.strategies.choice import choose

    if strategy is not None:
        strategy_named(strategy)  # an unknown name is refused before anything is read
    target_ref, source_ref = parse_model(target), parse_model(source)
    target_info = model_info(target_ref)
    model_info(source_ref)
    if target_ref == source_ref:
        raise BadInput(f"--to and --from are the same model ({target_ref}): nothing to re-embed")
    info = catalog.inspect_table(conn, table)
    if not info.primary_key:
        raise BadInput(f"table {info.qualified} has no primary key: reembed needs one to track rows")
    access.refuse_hidden_rows(conn, info)  # before anything counts rows
    col = info.column(column)
    if col is None:
        raise BadInput(f"column {column!r} does not exist in {info.qualified}")
    if not col.is_vector:
        raise BadInput(f"column {column!r} of {info.qualified} is {col.type}, not a vector column")
    if not text_columns:
        raise BadInput("--text needs at least one text column")
    for text_col in text_columns + ([title_column] if title_column else []):
        found = info.column(text_col)
        if found is None:
            raise BadInput(f"text column {text_col!r} does not exist in {info.qualified}")
        if not found.is_text:
            raise BadInput(f"column {text_col!r} of {info.qualified} is {found.type}, not a text column")
    tracked = text_columns + ([title_column] if title_column else [])
    _refuse_inheritance(conn, info, [column] + tracked)
    dims = _planned_dimensions(conn, info, col, dimensions)
    low, high = target_info.limits.supported_dimensions
    if not low <= dims <= high:
        raise BadInput(f"{target_ref} produces {low} to {high} dimensions, not {dims}")
    tag = model_tag(target_ref)
    new_type = _new_type(col, dims)
    indexes = plan_indexes(info, col, dims, index_request, tag, model_tag(source_ref),
                           new_base=new_type.split("(")[0] if new_type else None)
    shadow = bounded_identifier(column, tag)
    old = bounded_identifier(column, "old_" + model_tag(source_ref))
    plan_name = validate_plan_name(name or f"{info.name}-{column}-{tag}".replace(" ", "_"))
    plan = Plan(
        name=plan_name, table_schema=info.schema, table_name=info.name,
        primary_key=[c.name for c in info.primary_key], column=column, column_type=col.type,
        column_not_null=col.not_null, shadow_column=shadow, old_column=old, text_columns=text_columns,
        title_column=title_column, source=str(source_ref), target=str(target_ref), dimensions=dims,
        indexes=indexes, table_fingerprint="", new_type=new_type,
        text_inputs=[i for name in tracked for i in info.column(name).inputs if i not in tracked],  # type: ignore[union-attr]
    )
    plan.table_fingerprint = info.fingerprint(plan.shape_columns)
    choice = choose(conn, plan, info, strategy)
    plan.strategy, plan.choice = choice.chosen, choice.to_spec()
    strategy_named(plan.strategy).check_plan(conn, plan, info)
    return plan, info


def _refuse_inheritance(conn: psycopg.Connection, info: catalog.TableInfo, columns: list[str]) -> None:
    """Rows of inheritance children are read and written through the parent, but the parent's
    triggers do not fire for them and its indexes do not cover them; an inherited column (of an
    inheritance child, or of a partition migrated on its own) cannot be renamed there alone.
    Refused here rather than found out after the paid backfill. A partitioned table is not refused:
    its row triggers are cloned onto every partition and its indexes are built per partition."""
    tree = catalog.lineage(conn, info.oid)
    if tree.children and not tree.partitioned:  # partitions are supported: triggers and indexes cover them
        raise BadInput(f"{info.qualified} has inheritance children ({', '.join(tree.children)}): their rows are read "
                       "and written through it, but its triggers do not fire for them and its indexes do not cover "
                       "them, so change tracking would miss their edits; nothing was changed")
    inherited = [c for c in columns if c in tree.inherited_columns]
    if inherited:
        raise BadInput(f"column(s) {', '.join(inherited)} of {info.qualified} come from {', '.join(tree.parents)}: an "
                       "inherited column can only be renamed on the parent, so the swap could not happen here; "
                       "nothing was changed")


def _new_type(col: catalog.Column, dims: int) -> str | None:
    """With new dimensions the new column is vector(N), or halfvec(N) above the 2,000 dimensions an
    HNSW or IVFFlat index holds as vector (pgvector casts the application's vector parameters to
    halfvec by itself). None: the original's type (an unsized column stays unsized)."""
    if col.dimensions is None or dims == col.dimensions:
        return None
    return f"{'vector' if dims <= HNSW_MAX_DIMS['vector'] else 'halfvec'}({dims})"


def _planned_dimensions(conn: psycopg.Connection, info: catalog.TableInfo, col: catalog.Column,
                        requested: int | None) -> int:
    if col.dimensions is not None:
        if requested is not None and requested < 1:
            raise BadInput(f"--dimensions must be positive, not {requested}")
        # New dimensions are a new column type (see _new_type); the application's query vectors
        # change with the query model at the same moment.
        return requested or col.dimensions
    # An unsized column can hold vectors of any dimension (langchain keeps every collection in one
    # table): a column whose rows disagree cannot be swapped for one of one dimension.
    counts = conn.execute(sql.SQL(
        "SELECT vector_dims({c}), count(*) FROM {t} WHERE {c} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1").format(
        c=sql.Identifier(col.name), t=info.ident)).fetchall()
    if len(counts) > 1:
        found = ", ".join(f"{rows} rows of {dims} dims" for dims, rows in counts)
        raise BadInput(f"column {col.name!r} of {info.qualified} holds vectors of {len(counts)} dimensions ({found}): "
                       "after the swap every row would have the new model's one dimension and the other "
                       "collections' queries and inserts would fail; move each collection to its own table first")
    if requested is not None:
        if requested < 1:
            raise BadInput(f"--dimensions must be positive, not {requested}")
        return requested
    if not counts:
        raise BadInput(f"column {col.name!r} is an unsized vector with no values: give --dimensions N")
    return int(counts[0][0])
