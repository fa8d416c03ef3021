"""The event-log and entity-table schemas (Parquet) and the readers that enforce them.

Users bring their own logs by converting them to these schemas; everything downstream reads only them.

Events, one row per impression:
    request_id        int64    groups the impressions shown together (one /rank call)
    user_id           string
    country           string   ISO 3166 alpha-2
    task              string   search | prequery | more_like_this
    query             string?  what was typed (search only; null otherwise)
    source_entity_id  string?  the entity the page is about (more_like_this only)
    target_entity_id  string   the entity shown
    clicked           bool
    played            bool
    timestamp         timestamp[ms]

Entities:
    entity_id     string
    title         string
    kind          string        video | game
    genres        list<string>
    release_year  int32
    countries     list<string>  where it is available
    tags          list<string>? optional: catalogue tags search finds the entity by (with its genres)
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from unirank.core.vocab import TASKS

KINDS = ("video", "game")

EVENT_SCHEMA = pa.schema(
    [
        ("request_id", pa.int64()),
        ("user_id", pa.string()),
        ("country", pa.string()),
        ("task", pa.string()),
        ("query", pa.string()),
        ("source_entity_id", pa.string()),
        ("target_entity_id", pa.string()),
        ("clicked", pa.bool_()),
        ("played", pa.bool_()),
        ("timestamp", pa.timestamp("ms")),
    ]
)

ENTITY_SCHEMA = pa.schema(
    [
        ("entity_id", pa.string()),
        ("title", pa.string()),
        ("kind", pa.string()),
        ("genres", pa.list_(pa.string())),
        ("release_year", pa.int32()),
        ("countries", pa.list_(pa.string())),
    ]
)

NULLABLE = {"query", "source_entity_id"}
# optional entity columns: kept when a file has them (a null is an empty list)
ENTITY_OPTIONAL = pa.schema([("tags", pa.list_(pa.string()))])
ENTITY_FULL_SCHEMA = pa.schema([*ENTITY_SCHEMA, *ENTITY_OPTIONAL])  # what unirank writes: every column


def with_optional_columns(table: pa.Table) -> pa.Table:
    """An entities table with every optional column (empty lists where it had none), in ENTITY_FULL_SCHEMA."""
    for field in ENTITY_OPTIONAL:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.array([[]] * table.num_rows, field.type))
    return table.select(ENTITY_FULL_SCHEMA.names).cast(ENTITY_FULL_SCHEMA)


class SchemaError(ValueError):
    """A data file does not follow the documented schema."""


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected):
        return True
    if pa.types.is_large_string(actual) and pa.types.is_string(expected):
        return True
    if pa.types.is_timestamp(expected) and pa.types.is_timestamp(actual):
        return True
    if pa.types.is_integer(expected) and pa.types.is_integer(actual):
        return True
    if (pa.types.is_list(expected) or pa.types.is_large_list(expected)) and (
        pa.types.is_list(actual) or pa.types.is_large_list(actual)
    ):
        return _compatible(actual.value_type, expected.value_type)
    return False


def validate(table: pa.Table, schema: pa.Schema, path: Path | str) -> pa.Table:
    """Check columns and types; cast to the canonical schema. Raise SchemaError naming file and column."""
    for field in schema:
        if field.name not in table.column_names:
            raise SchemaError(f"{path}: missing column '{field.name}' (expected {field.type})")
        actual = table.schema.field(field.name).type
        if not _compatible(actual, field.type):
            raise SchemaError(f"{path}: column '{field.name}' has type {actual}, expected {field.type}")
        if field.name not in NULLABLE and table.column(field.name).null_count:
            raise SchemaError(f"{path}: column '{field.name}' has null values")
    return table.select(schema.names).cast(schema)


def read_events(path: Path | str) -> pa.Table:
    """One file, or a directory of files read as one dataset (hive partitions such as date=... allowed)."""
    table = validate(pq.read_table(path), EVENT_SCHEMA, path)
    bad = set(table.column("task").unique().to_pylist()) - set(TASKS)
    if bad:
        raise SchemaError(f"{path}: column 'task' has unknown values {sorted(bad)}; allowed {TASKS}")
    return table


def read_entities(path: Path | str) -> pa.Table:
    raw = pq.read_table(path)
    table = validate(raw, ENTITY_SCHEMA, path)
    for field in ENTITY_OPTIONAL:
        if field.name in raw.column_names:
            actual = raw.schema.field(field.name).type
            if not _compatible(actual, field.type):
                raise SchemaError(f"{path}: column '{field.name}' has type {actual}, expected {field.type}")
            column = raw.column(field.name).cast(field.type).fill_null(pa.scalar([], field.type))
            table = table.append_column(field, column)
    return table


def events_path(data_dir: Path | str) -> Path:
    """`events.parquet`, or an `events/` directory of Parquet files (partitions as `unirank logs` writes)."""
    single, parts = Path(data_dir) / "events.parquet", Path(data_dir) / "events"
    return parts if not single.exists() and parts.is_dir() else single


def entities_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / "entities.parquet"
