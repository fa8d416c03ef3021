"""The served-impression log as training data: read the streams, join the feedback, write Parquet.

Contract:
- `read_log(client, since_ms, until_ms)` reads the impressions (stream ids in the window) and the
  feedback that can belong to them (from the first impression on), and `joined_table` turns them into
  the event schema — one row per shown item, `clicked`/`played` from the feedback with the same request
  id and entity — plus `position`, `experiment`, `variant` and `model_version` columns that training
  ignores. An anonymous request's user is "" (the unknown user); request ids become int64 by a stable
  hash (`request_number`), so exports of different runs and machines agree.
- `export_log` writes `events/date=YYYY-MM-DD/part-*.parquet` (a directory `unirank train` reads as one
  dataset) and `entities.parquet` (the bundle's catalogue plus the entities added at run time), to a
  local directory or an object-store URL (`s3://`, `gs://`: a replica's sink needs no shared disk;
  `unirank train --data s3://...` reads it back), chunk by chunk with a progress bar, and records in
  `export-state.json` the last impression exported: a rerun continues after it. `--settle S` leaves out
  the impressions of the last S seconds, whose clicks may still come. `sink` repeats that and trims from
  the streams what it moved.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from unirank.core.catalog_log import fold, snapshot_key
from unirank.core.impression_log import ENGAGED, FEEDBACK_STREAM, IMPRESSIONS_STREAM, Feedback, Impression, decode_entry
from unirank.core.object_store import DatasetLocation
from unirank.core.schema import ENTITY_FULL_SCHEMA, EVENT_SCHEMA, with_optional_columns
from unirank.core.streams import entry_id as id_of
from unirank.core.streams import ms_of
from unirank.core.vocab import Task

LOG_SCHEMA = pa.schema(
    list(EVENT_SCHEMA)
    + [
        ("position", pa.int32()),
        ("experiment", pa.string()),
        ("variant", pa.string()),
        ("model_version", pa.string()),
        ("request_key", pa.string()),
    ]
)
STATE_FILE = "export-state.json"
CATALOG_STREAM = "ur:entities"


def request_number(request_id: str) -> int:
    """A request id as the event schema's int64: a stable 63-bit hash."""
    return struct.unpack(">Q", hashlib.blake2b(request_id.encode(), digest_size=8).digest())[0] >> 1


def stream_entries(client: redis.Redis, stream: str, start: str = "-", end: str = "+", page: int = 5_000) -> Iterator:
    """(id, fields) of a stream between two ids (inclusive; "(" + id: exclusive), in pages."""
    while True:
        entries = client.xrange(stream, min=start, max=end, count=page)
        yield from entries
        if len(entries) < page:
            return
        start = "(" + entries[-1][0].decode()


@dataclass
class Log:
    impressions: list[tuple[str, Impression]]  # (stream id, record)
    feedback: list[Feedback]


def read_log(
    client: redis.Redis,
    since_ms: int | None = None,
    until_ms: int | None = None,
    after_id: str | None = None,
    impressions_stream: str = IMPRESSIONS_STREAM,
    feedback_stream: str = FEEDBACK_STREAM,
    limit: int | None = None,
) -> Log:
    start = f"({after_id}" if after_id else (str(since_ms) if since_ms is not None else "-")
    end = str(until_ms) if until_ms is not None else "+"
    impressions = []
    for entry_id, fields in stream_entries(client, impressions_stream, start, end):
        impressions += [(entry_id.decode(), imp) for imp in decode_entry(fields)]
        if limit is not None and len(impressions) >= limit:
            break  # whole entries only: a resumed export starts after the last one
    if not impressions:
        return Log([], [])
    first = min(imp.ts for _, imp in impressions)
    feedback = [Feedback.decode(f[b"f"]) for _, f in stream_entries(client, feedback_stream, str(first))]
    return Log(impressions, feedback)


def credit(feedback: list[Feedback]) -> dict[tuple[str, str], tuple[bool, bool]]:
    """(request id, entity) -> (clicked, played)."""
    out: dict[tuple[str, str], tuple[bool, bool]] = {}
    for f in feedback:
        if f.action not in ENGAGED:
            continue
        clicked, played = out.get((f.rid, f.entity), (False, False))
        out[(f.rid, f.entity)] = (True, played or f.action == "play")
    return out


def joined_table(log: Log) -> pa.Table:
    credits = credit(log.feedback)
    cols: dict[str, list] = {name: [] for name in LOG_SCHEMA.names}
    for _, imp in log.impressions:
        number = request_number(imp.rid)
        for position, item in enumerate(imp.items):
            clicked, played = credits.get((imp.rid, item["entity_id"]), (False, False))
            row = {
                "request_id": number,
                "user_id": imp.user or "",
                "country": imp.country,
                "task": imp.task,
                "query": imp.query if imp.task == Task.SEARCH else None,
                "source_entity_id": imp.source,
                "target_entity_id": item["entity_id"],
                "clicked": clicked,
                "played": played,
                "timestamp": imp.ts,
                "position": position,
                "experiment": imp.experiment,
                "variant": item.get("variant", imp.variant),
                "model_version": imp.version,
                "request_key": imp.rid,
            }
            for name, value in row.items():
                cols[name].append(value)
    arrays = [pa.array(cols[f.name], type=pa.int64() if f.name == "timestamp" else f.type) for f in LOG_SCHEMA]
    table = pa.Table.from_arrays(arrays, names=LOG_SCHEMA.names)
    return table.set_column(
        LOG_SCHEMA.get_field_index("timestamp"), "timestamp", table.column("timestamp").cast(pa.timestamp("ms"))
    )


def entities_table(bundle: Path, client: redis.Redis, catalog_stream: str = CATALOG_STREAM) -> pa.Table:
    """The bundle's catalogue, then the entities added at run time (the last record of an id wins)."""
    catalog = with_optional_columns(pq.read_table(bundle / "tables" / "entities.parquet"))
    trained = set(catalog.column("entity_id").to_pylist())
    snapshot = client.hgetall(snapshot_key(catalog_stream)) or None
    start = f"({id_of(snapshot[b'last_id'])}" if snapshot else "-"
    # the snapshot and the entries after it, folded as the service's workers apply them
    folded = fold(snapshot, list(stream_entries(client, catalog_stream, start)))
    added = {r["entity_id"]: r for r in orjson.loads(folded[b"entities"]) if r["entity_id"] not in trained}
    if not added:
        return catalog
    countries = sorted({c for cs in catalog.column("countries").to_pylist() for c in cs})
    median_year = (
        int(sorted(catalog.column("release_year").to_pylist())[catalog.num_rows // 2]) if catalog.num_rows else 2000
    )
    rows = {
        "entity_id": list(added),
        "title": [r["title"] for r in added.values()],
        "kind": [r.get("kind") or "video" for r in added.values()],
        "genres": [list(r.get("genres") or []) for r in added.values()],
        "release_year": [r.get("release_year") or median_year for r in added.values()],
        "countries": [
            [c.upper() for c in r["countries"]] if r.get("countries") is not None else countries for r in added.values()
        ],
        "tags": [list(r.get("tags") or []) for r in added.values()],
    }
    return pa.concat_tables([catalog, pa.table(rows, schema=ENTITY_FULL_SCHEMA)])


def _parquet(table: pa.Table) -> bytes:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return buffer.getvalue().to_pybytes()


def write_parts(table: pa.Table, out: DatasetLocation, name: str) -> list[str]:
    """One Parquet file per impression date under out/events/date=YYYY-MM-DD/."""
    if table.num_rows == 0:
        return []
    dates = pc.strftime(table.column("timestamp"), format="%Y-%m-%d").to_pylist()
    written = []
    for date in sorted(set(dates)):
        part = table.filter(pa.array([d == date for d in dates]))
        written.append(out.write_bytes(_parquet(part), "events", f"date={date}", f"part-{name}.parquet"))
    return written


def load_state(out: DatasetLocation) -> dict:
    if out.exists(STATE_FILE):
        return json.loads(out.read_bytes(STATE_FILE))
    return {"last_id": None, "rows": 0, "impressions": 0, "parts": 0}


def export_log(
    client: redis.Redis,
    out: str | Path,
    bundle: Path,
    since_ms: int | None = None,
    until_ms: int | None = None,
    settle_s: float = 0.0,
    chunk: int = 20_000,
    progress: bool = True,
    impressions_stream: str = IMPRESSIONS_STREAM,
    feedback_stream: str = FEEDBACK_STREAM,
    catalog_stream: str = CATALOG_STREAM,
) -> dict:
    """Exports (resuming after the last exported impression) to a directory or an object-store URL;
    returns the state with this run's counts."""
    from tqdm import tqdm

    location = DatasetLocation(out)
    state = load_state(location)
    settled = int((time.time() - settle_s) * 1000)
    until = settled if until_ms is None else min(until_ms, settled)
    total = client.xlen(impressions_stream)
    bar = tqdm(total=total, desc="export", unit="impression", disable=not progress)
    run = {"impressions": 0, "rows": 0, "clicked": 0}
    while True:
        log = read_log(client, since_ms, until, state["last_id"], impressions_stream, feedback_stream, limit=chunk)
        if not log.impressions:
            break
        table = joined_table(log)
        last_id = log.impressions[-1][0]
        write_parts(table, location, last_id.replace("-", "_"))
        state |= {
            "last_id": last_id,
            "rows": state["rows"] + table.num_rows,
            "impressions": state["impressions"] + len(log.impressions),
            "parts": state["parts"] + 1,
        }
        location.write_bytes(json.dumps(state, indent=2).encode(), STATE_FILE)
        run["impressions"] += len(log.impressions)
        run["rows"] += table.num_rows
        run["clicked"] += int(pc.sum(table.column("clicked")).as_py() or 0)
        bar.update(len(log.impressions))
    bar.close()
    location.write_bytes(_parquet(entities_table(bundle, client, catalog_stream)), "entities.parquet")
    return state | {"this_run": run}


def sink(
    client: redis.Redis,
    out: str | Path,
    bundle: Path,
    every_s: float = 60.0,
    settle_s: float = 300.0,
    rounds: int | None = None,
    log=print,
    **streams,
) -> None:
    """Moves the log into Parquet partitions every `every_s`, trimming what was moved from the streams:
    impressions up to the last exported one, feedback older than it (later clicks are for later ones)."""
    done = 0
    while rounds is None or done < rounds:
        state = export_log(client, out, bundle, settle_s=settle_s, progress=False, **streams)
        if state["last_id"]:
            # exact trims: what was not moved must stay (an approximate trim only drops whole nodes anyway)
            client.xtrim(
                streams.get("impressions_stream", IMPRESSIONS_STREAM), minid=state["last_id"], approximate=False
            )
            client.xtrim(
                streams.get("feedback_stream", FEEDBACK_STREAM), minid=str(ms_of(state["last_id"])), approximate=False
            )
        log(
            f"sink: {state['this_run']['impressions']} impressions, {state['this_run']['rows']} rows moved "
            f"(total {state['impressions']})"
        )
        done += 1
        if rounds is None or done < rounds:
            time.sleep(every_s)
