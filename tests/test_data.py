"""The synthetic generator and the schema readers."""

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from model_export.synth import SynthParams, generate
from tests.helpers import shuffled_partitioned_copy
from unirank.core.schema import SchemaError, read_entities, read_events


def test_generator_is_deterministic(tmp_path):
    p = SynthParams(users=300, entities=200, events=8_000, seed=11)
    generate(p, tmp_path / "a")
    generate(p, tmp_path / "b")
    generate(SynthParams(users=300, entities=200, events=8_000, seed=12), tmp_path / "c")
    a, b, c = (pq.read_table(tmp_path / d / "events.parquet") for d in "abc")
    assert a.equals(b)
    assert pq.read_table(tmp_path / "a" / "entities.parquet").equals(pq.read_table(tmp_path / "b" / "entities.parquet"))
    assert not a.equals(c)


def test_generated_data_follows_the_schema(data_dir):
    events = read_events(data_dir / "events.parquet")
    entities = read_entities(data_dir / "entities.parquet")
    assert set(events.column("task").unique().to_pylist()) == {"search", "prequery", "more_like_this"}
    assert "US" in events.column("country").unique().to_pylist()
    assert all(len(c) == 2 and c.isupper() for c in events.column("country").unique().to_pylist())
    search = events.filter(pc.equal(events.column("task"), "search"))
    assert search.column("query").null_count == 0
    assert search.column("source_entity_id").null_count == search.num_rows
    mlt = events.filter(pc.equal(events.column("task"), "more_like_this"))
    assert mlt.column("source_entity_id").null_count == 0
    # Every impression is of an entity available in the request's country.
    avail = {
        e: set(c)
        for e, c in zip(entities.column("entity_id").to_pylist(), entities.column("countries").to_pylist(), strict=True)
    }
    rows = events.select(["country", "target_entity_id"]).to_pylist()
    assert all(r["country"] in avail[r["target_entity_id"]] for r in rows)
    assert 0 < pc.mean(events.column("clicked").cast(pa.float64())).as_py() < 0.5


def test_search_logs_hold_keystroke_prefixes(data_dir):
    events = read_events(data_dir / "events.parquet")
    search = events.filter(pc.equal(events.column("task"), "search")).sort_by("request_id")
    queries = search.group_by(["request_id", "user_id", "query"]).aggregate([]).sort_by("request_id").to_pylist()
    growing = sum(
        1
        for a, b in zip(queries, queries[1:], strict=False)
        if a["user_id"] == b["user_id"] and b["query"].startswith(a["query"]) and len(b["query"]) == len(a["query"]) + 1
    )
    assert growing > len(queries) * 0.3
    assert any(len(q["query"]) == 1 for q in queries)


def test_missing_column_names_file_and_column(data_dir, tmp_path):
    table = pq.read_table(data_dir / "events.parquet").drop_columns(["clicked"])
    path = tmp_path / "broken.parquet"
    pq.write_table(table, path)
    with pytest.raises(SchemaError, match=r"broken\.parquet.*'clicked'"):
        read_events(path)


def test_wrong_type_names_the_column(data_dir, tmp_path):
    table = pq.read_table(data_dir / "entities.parquet")
    table = table.set_column(
        table.schema.get_field_index("release_year"),
        "release_year",
        pa.array([str(y) for y in table.column("release_year").to_pylist()]),
    )
    path = tmp_path / "entities.parquet"
    pq.write_table(table, path)
    with pytest.raises(SchemaError, match=r"entities\.parquet.*'release_year'.*string"):
        read_entities(path)


def test_entity_tags_are_optional_kept_when_given_and_checked(data_dir, tmp_path):
    table = pq.read_table(data_dir / "entities.parquet")
    assert "tags" not in read_entities(data_dir / "entities.parquet").column_names  # a catalogue without tags
    tags = [["Feel Good", "pixar"], None] + [[] for _ in range(table.num_rows - 2)]
    pq.write_table(table.append_column("tags", pa.array(tags, pa.list_(pa.string()))), tmp_path / "entities.parquet")
    got = read_entities(tmp_path / "entities.parquet").column("tags").to_pylist()
    assert got[:3] == [["Feel Good", "pixar"], [], []]  # a null is no tags
    bad = table.append_column("tags", pa.array([[1]] * table.num_rows, pa.list_(pa.int64())))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match=r"bad\.parquet.*'tags'.*int64"):
        read_entities(tmp_path / "bad.parquet")


def test_unknown_task_is_rejected(data_dir, tmp_path):
    table = pq.read_table(data_dir / "events.parquet")
    tasks = np.array(table.column("task").to_pylist(), dtype=object)
    tasks[0] = "browse"
    table = table.set_column(table.schema.get_field_index("task"), "task", pa.array(tasks.tolist()))
    pq.write_table(table, tmp_path / "events.parquet")
    with pytest.raises(SchemaError, match="'task'.*browse"):
        read_events(tmp_path / "events.parquet")


def test_a_partitioned_shuffled_dataset_reads_as_the_single_file(data_dir, tmp_path):
    """A directory of Parquet partitions (as `unirank logs sink` writes, hive `date=` folders here), its
    rows shuffled across files, loads to exactly the single file's events and splits: row order and file
    layout carry no information."""
    from model_export.data import Dataset, Requests
    from unirank.core.schema import events_path

    single = pq.read_table(data_dir / "events.parquet")
    parts = shuffled_partitioned_copy(data_dir, tmp_path / "parts")
    assert events_path(parts).is_dir() and len(list((parts / "events").rglob("*.parquet"))) > 5
    a, b = Dataset.load(data_dir), Dataset.load(parts)
    assert a.events.select(single.column_names).equals(b.events.select(single.column_names))
    for split in ("feature", "fit", "validation", "test"):
        ra, rb = Requests.from_events(a.split(split)), Requests.from_events(b.split(split))
        assert np.array_equal(ra.request_id, rb.request_id)
        assert np.array_equal(ra.target_entity_id, rb.target_entity_id)
        assert np.array_equal(ra.row_request, rb.row_request)


def test_a_large_log_is_written_in_parts_that_read_as_one(tmp_path):
    """`unirank data synth` beyond `part_events`: consecutive time windows, one Parquet file each, request
    ids unique and following the parts; the directory loads as a dataset; up to `part_events` the output
    is the single file it always was."""
    from model_export.data import Dataset
    from unirank.core.schema import events_path

    p = SynthParams(users=400, entities=250, events=12_000, seed=2)
    whole = generate(p, tmp_path / "whole")
    parted = generate(p, tmp_path / "parted", part_events=4_000)
    assert whole["parts"] == 1 and (tmp_path / "whole" / "events.parquet").exists()
    files = sorted((tmp_path / "parted" / "events").glob("part-*.parquet"))
    assert parted["parts"] == len(files) == 3 and events_path(tmp_path / "parted").is_dir()
    ranges = []
    for f in files:
        t = pq.read_table(f)
        ts = t.column("timestamp").cast(pa.int64()).to_numpy()
        ranges.append((t.column("request_id").to_numpy(), ts))
    for (req_a, ts_a), (req_b, ts_b) in itertools.pairwise(ranges):
        assert req_a.max() < req_b.min()  # ids go on across parts
        assert np.median(ts_a) < np.median(ts_b)  # and so does time
    events = Dataset.load(tmp_path / "parted").events
    assert events.num_rows == parted["events"] and parted["events"] == pytest.approx(whole["events"], rel=0.05)
    assert int(pc.sum(pc.cast(events.column("clicked"), pa.int64())).as_py()) == parted["clicks"]
    assert len(np.unique(events.column("request_id").to_numpy())) <= parted["requests"]
    # a second run into the same directory replaces the first, whichever layout it had
    generate(p, tmp_path / "parted")
    assert not (tmp_path / "parted" / "events").exists()
    assert pq.read_table(tmp_path / "parted" / "events.parquet").equals(
        pq.read_table(tmp_path / "whole" / "events.parquet")
    )
