"""What the migration role can see and do, checked at plan before anything is paid for.

Row security that hides rows would make every count, read and check see part of the table (and
cutover would leave the hidden rows without a vector); a missing privilege would stop a later
phase after the backfill was paid for. Both are refused at plan, naming the fix. Read-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from toolkit.catalog import TableInfo
from toolkit.errors import BadInput


@dataclass(frozen=True)
class RoleFacts:
    role: str
    superuser: bool
    bypass_rls: bool
    owns_table: bool
    table_owner: str
    rls_enabled: bool
    rls_forced: bool
    rls_active: bool  # row_security_active(): policies filter what this role reads


def role_facts(conn: psycopg.Connection, oid: int) -> RoleFacts:
    row = conn.execute(
        """SELECT current_user, r.rolsuper, r.rolbypassrls, pg_has_role(c.relowner, 'USAGE'),
                  pg_get_userbyid(c.relowner), c.relrowsecurity, c.relforcerowsecurity, row_security_active(c.oid)
           FROM pg_class c, pg_roles r WHERE c.oid = %s AND r.rolname = current_user""", (oid,)).fetchone()
    assert row is not None
    return RoleFacts(*row)


def hidden_rows_reason(conn: psycopg.Connection, info: TableInfo) -> str | None:
    """Why row security hides rows of the table from this role, with the fixes; None when it sees all."""
    facts = role_facts(conn, info.oid)
    if not facts.rls_active:
        return None
    if facts.owns_table:
        why = f"{info.qualified} has FORCE ROW LEVEL SECURITY, which applies its policies even to its owner"
        fixes = (f"ALTER TABLE {info.qualified} NO FORCE ROW LEVEL SECURITY for the migration, "
                 f"or ALTER ROLE {facts.role} BYPASSRLS")
    else:
        why = (f"{info.qualified} has row level security and role {facts.role} neither owns it nor has BYPASSRLS")
        fixes = f"run reembed as its owner {facts.table_owner} (without FORCE ROW LEVEL SECURITY), or ALTER ROLE " \
                f"{facts.role} BYPASSRLS"
    return (f"row security hides rows of {info.qualified} from role {facts.role}: {why}, so counting, embedding "
            f"and verifying would see only the rows its policies show, and after cutover the others would have no "
            f"vector; fix: {fixes}")


def refuse_hidden_rows(conn: psycopg.Connection, info: TableInfo) -> None:
    reason = hidden_rows_reason(conn, info)
    if reason:
        raise BadInput(reason)


# -- privileges ---------------------------------------------------------------------------------

_DEPENDENT_OWNERS = """
SELECT kind, name, pg_has_role(owner, 'USAGE') AS owned, pg_get_userbyid(owner) AS owner,
       nsp IS NULL OR has_schema_privilege(nsp, 'CREATE') AS may_create, nsp::regnamespace::text AS schema
FROM (
    SELECT DISTINCT CASE c.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END AS kind,
           format('%%I.%%I', n.nspname, c.relname) AS name, c.relowner AS owner, c.relnamespace AS nsp
    FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class c ON c.oid = r.ev_class
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %(t)s
      AND d.refobjsubid = %(a)s AND c.oid <> %(t)s
    UNION
    SELECT 'function', p.oid::regprocedure::text, p.proowner, p.pronamespace
    FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
    WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = %(t)s
      AND d.refobjsubid = %(a)s
    UNION
    SELECT 'statistics', format('%%I.%%I', n.nspname, s.stxname), s.stxowner, s.stxnamespace
    FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
    WHERE s.stxrelid = %(t)s AND (%(a)s = ANY (s.stxkeys::int2[]) OR EXISTS (
        SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_statistic_ext'::regclass AND d.objid = s.oid
          AND d.refobjid = %(t)s AND d.refobjsubid = %(a)s))
    UNION
    SELECT 'publication', p.pubname, p.pubowner, NULL
    FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
    WHERE pr.prrelid = %(t)s AND (%(a)s = ANY (pr.prattrs::int2[]) OR EXISTS (
        SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_publication_rel'::regclass AND d.objid = pr.oid
          AND d.refobjid = %(t)s AND d.refobjsubid = %(a)s))
) AS dependents
ORDER BY 1, 2
"""


def missing_privileges(conn: psycopg.Connection, info: TableInfo, column: str) -> list[str]:
    """Every privilege the column strategy needs that this role lacks, each with the statement that
    grants it: CREATE on the table's schema (the new index), ownership of the table (ADD COLUMN,
    the trigger, the renames), TEMP (the writers' staging tables), CREATE on schema reembed (the
    tracking function), and ownership of (and CREATE in the schema of) everything cutover
    re-creates on the column."""
    facts = role_facts(conn, info.oid)
    role = facts.role
    if facts.superuser:
        return []
    missing: list[str] = []
    if not facts.owns_table:
        missing.append(f"ownership of table {info.qualified}, owned by {facts.table_owner} (adding the column, "
                       f"the trigger and the swap are the owner's: run as {facts.table_owner} or GRANT "
                       f"{facts.table_owner} TO {role})")
    for partition, owner in conn.execute(
            "SELECT t.relid::regclass::text, pg_get_userbyid(c.relowner) FROM pg_partition_tree(%s::regclass) t "
            "JOIN pg_class c ON c.oid = t.relid WHERE t.level > 0 AND NOT pg_has_role(c.relowner, 'USAGE') "
            "ORDER BY 1", (info.oid,)).fetchall():
        missing.append(f"ownership of partition {partition}, owned by {owner} (the new column, its indexes and the "
                       "swap reach every partition)")
    schema_create, temp, reembed_create = conn.execute(
        """SELECT has_schema_privilege(%s, 'CREATE'), has_database_privilege(current_database(), 'TEMP'),
                  to_regnamespace('reembed') IS NULL OR has_schema_privilege('reembed', 'CREATE')""",
        (info.schema,)).fetchone()  # type: ignore[misc]
    if not schema_create:
        missing.append(f"CREATE on schema {info.schema} (the new index is created there: GRANT CREATE ON SCHEMA "
                       f"{info.schema} TO {role})")
    if not temp:
        missing.append(f"TEMP on the database (each writer stages its batch in a temporary table: GRANT TEMP ON "
                       f"DATABASE {conn.info.dbname} TO {role})")
    if not reembed_create:
        missing.append(f"CREATE on schema reembed (the change-tracking function is created there: GRANT CREATE ON "
                       f"SCHEMA reembed TO {role})")
    attnum = next(c.attnum for c in info.columns if c.name == column)
    for kind, name, owned, owner, may_create, schema in conn.execute(
            _DEPENDENT_OWNERS, {"t": info.oid, "a": attnum}).fetchall():
        if not owned:
            missing.append(f"ownership of {kind} {name}, owned by {owner} (cutover re-creates it on the new column)")
        elif not may_create:
            missing.append(f"CREATE on schema {schema} (cutover re-creates {kind} {name} there: GRANT CREATE ON "
                           f"SCHEMA {schema} TO {role})")
    return missing


def refuse_missing_privileges(conn: psycopg.Connection, info: TableInfo, column: str) -> None:
    missing = missing_privileges(conn, info, column)
    if missing:
        role = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
        raise BadInput(f"role {role} lacks what the migration of {info.qualified}.{column} needs, so a later phase "
                       f"would fail after the backfill was paid for: {'; '.join(missing)}; nothing was changed")
