"""Versioned SQL migrations of the jobs schema (JOBS_SCHEMA, default `otel_worker`).

The files `shared/migrations/NNNN_name.sql` are applied in version order, each once, and
recorded with a checksum in `<schema>.schema_migrations`. They are written without schema
names: each runs with `search_path` set to the jobs schema for its transaction only.

`migrate` takes a transaction-scoped advisory lock first and applies everything pending in
that one transaction, so several processes may run it at once, through PgBouncer too: one
applies, the others wait for it and find nothing left to do; a failure applies nothing.
An applied file whose text has changed, or a version the code does not know, is refused.

The schema the migrations must produce is committed beside them (`expected_schema.txt`,
written by `otel-worker migrate --describe`) and compared with the database by the tests
and by `otel-worker doctor`, so a hand-made change or an edited migration is caught.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

from psycopg import sql

from shared.db import Connection
from shared.errors import OtelWorkerError

EXPECTED_SCHEMA_FILE: Final = "expected_schema.txt"
SCHEMA_FILE_HEADER: Final = """\
# The jobs schema as the migrations must leave it, read from the catalog by
# `otel-worker migrate --describe` (lines starting with # are ignored). The tests and
# `otel-worker doctor` compare a migrated database with it. After adding a migration,
# migrate a fresh database and replace this file with that command's output.
"""
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(OtelWorkerError, RuntimeError):
    """The database's migration history does not match the migration files."""


@dataclass(frozen=True)
class Migration:
    """One versioned SQL file."""

    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        """sha256 of the file's text, recorded when it is applied."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def available() -> list[Migration]:
    """The migration files shipped with the code, in version order (from 1, each once)."""
    folder = resources.files("shared") / "migrations"
    migrations = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            migrations.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    migrations.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in migrations]
    # Increasing from 1, each once; a number may be skipped (taken by work not merged yet).
    if not versions or versions[0] != 1 or len(set(versions)) != len(versions):
        raise MigrationError(f"migration versions must start at 1, each used once: {versions}")
    return migrations


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"otel-worker migrate {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _applied(conn: Connection, schema: str) -> dict[int, str]:
    """version -> checksum of the migrations recorded in `schema` (none if not migrated)."""
    table = conn.execute(
        "SELECT to_regclass(format('%%I.schema_migrations', %s::text)) IS NOT NULL", [schema]
    ).fetchone()
    if not (table and table[0]):
        return {}
    rows = conn.execute(
        sql.SQL("SELECT version, checksum FROM {}.schema_migrations").format(sql.Identifier(schema))
    ).fetchall()
    return {int(version): str(checksum) for version, checksum in rows}


def _history_problems(migrations: list[Migration], applied: dict[int, str]) -> list[str]:
    known = {migration.version: migration for migration in migrations}
    problems = [
        f"migration {version:04d} is applied but unknown to this version of otel-worker"
        for version in sorted(set(applied) - set(known))
    ]
    problems += [
        f"migration {version:04d}_{known[version].name}.sql changed after it was applied"
        for version in sorted(set(applied) & set(known))
        if applied[version] != known[version].checksum
    ]
    return problems


def migrate(conn: Connection, schema: str, service_role: str | None = None) -> list[Migration]:
    """Bring `schema` up to date; return the migrations this call applied (often none).

    `conn` must be outside a transaction (autocommit or idle): everything runs in one
    transaction of its own. Raises `MigrationError` when the recorded history disagrees
    with the files. With `service_role` (DB_SERVICE_ROLE), that role is granted what the
    services need, and only that (`grant_service_role`, migrations 0005 and 0007), on every run.
    """
    migrations = available()
    name = sql.Identifier(schema)
    with conn.transaction():
        # Serialises concurrent runs, including their CREATE SCHEMA.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(schema)])
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(name)
        )
        applied = _applied(conn, schema)
        problems = _history_problems(migrations, applied)
        if problems:
            raise MigrationError("; ".join(problems))
        pending = [migration for migration in migrations if migration.version not in applied]
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(name))
        for migration in pending:
            conn.execute(migration.text.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                [migration.version, migration.name, migration.checksum],
            )
        if service_role is not None:
            conn.execute("SELECT grant_service_role(%s)", [service_role])
    return pending


@dataclass(frozen=True)
class MigrationStatus:
    """Where a database's jobs schema stands against the code."""

    schema: str
    applied: tuple[int, ...]
    pending: tuple[Migration, ...]
    problems: tuple[str, ...]
    """History mismatches, and the difference from the expected schema when up to date."""

    @property
    def up_to_date(self) -> bool:
        """All migrations applied and the schema exactly as expected."""
        return not self.pending and not self.problems


def status(conn: Connection, schema: str) -> MigrationStatus:
    """Compare `schema` with the migration files and, when fully migrated, the expected schema."""
    migrations = available()
    with conn.transaction():
        applied = _applied(conn, schema)
        problems = _history_problems(migrations, applied)
        pending = tuple(migration for migration in migrations if migration.version not in applied)
        if not pending and not problems:
            drift = schema_difference(expected_schema(), describe_schema(conn, schema))
            if drift:
                problems.append(f"schema {schema} differs from {EXPECTED_SCHEMA_FILE}:\n{drift}")
    return MigrationStatus(schema, tuple(sorted(applied)), pending, tuple(problems))


def expected_schema() -> str:
    """The committed description of the fully migrated schema (comment lines removed)."""
    text = (resources.files("shared") / "migrations" / EXPECTED_SCHEMA_FILE).read_text("utf-8")
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


def schema_difference(expected: str, actual: str) -> str:
    """A unified diff from `expected` to `actual`; empty when they are the same."""
    return "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile="expected",
            tofile="database",
        )
    )


def describe_schema(conn: Connection, schema: str) -> str:
    """A normalised text description of every object in `schema`, read from the catalog.

    Tables with their storage options, columns (in order), constraints, indexes and
    triggers;
    sequences, views, functions and types by name. Definitions are printed with
    `search_path` set to the schema, so the description does not depend on its name.
    """
    lines: list[str] = []
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        tables = conn.execute(
            """SELECT c.oid, c.relname, array_to_string(c.reloptions, ', ') FROM pg_class c
               WHERE c.relnamespace = to_regnamespace(%s) AND c.relkind IN ('r', 'p')
               ORDER BY c.relname""",
            [schema],
        ).fetchall()
        for oid, table, options in tables:
            lines.append(f"table {table}" + (f" WITH ({options})" if options else ""))
            for column, kind, not_null, default in conn.execute(
                """SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                          pg_get_expr(d.adbin, d.adrelid)
                   FROM pg_attribute a
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                   WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
                   ORDER BY a.attnum""",
                [oid],
            ):
                text = f"  column {column} {kind}" + (" NOT NULL" if not_null else "")
                lines.append(text + (f" DEFAULT {default}" if default else ""))
            for constraint, definition in conn.execute(
                """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
                   WHERE conrelid = %s ORDER BY conname""",
                [oid],
            ):
                lines.append(f"  constraint {constraint} {definition}")
            for (definition,) in conn.execute(
                # pg_get_indexdef qualifies the table whatever the search_path.
                """SELECT replace(pg_get_indexdef(indexrelid), ' ON ' || quote_ident(%s) || '.',
                                  ' ON ')
                   FROM pg_index WHERE indrelid = %s ORDER BY indexrelid::regclass::text""",
                [schema, oid],
            ):
                lines.append(f"  index {definition}")
            for (definition,) in conn.execute(
                """SELECT replace(pg_get_triggerdef(oid), ' ON ' || quote_ident(%s) || '.', ' ON ')
                   FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal ORDER BY tgname""",
                [schema, oid],
            ):
                lines.append(f"  trigger {definition}")
        for kind, name in conn.execute(
            """SELECT CASE relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
                                   WHEN 'm' THEN 'materialized view' ELSE 'relation' END,
                      relname
               FROM pg_class
               WHERE relnamespace = to_regnamespace(%s) AND relkind NOT IN ('r', 'p', 'i')
               ORDER BY 1, 2""",
            [schema],
        ):
            lines.append(f"{kind} {name}")
        for (signature,) in conn.execute(
            """SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
               FROM pg_proc p WHERE p.pronamespace = to_regnamespace(%s) ORDER BY 1""",
            [schema],
        ):
            lines.append(f"function {signature}")
        for (name,) in conn.execute(
            """SELECT t.typname FROM pg_type t
               WHERE t.typnamespace = to_regnamespace(%s) AND t.typtype IN ('e', 'd', 'r')
               ORDER BY 1""",
            [schema],
        ):
            lines.append(f"type {name}")
    return "".join(line + "\n" for line in lines)
