"""Shard layout: deterministic cuts, markers that must match the plan, partial parts removed."""

import pyarrow as pa
import pytest

from aipo_ray.storage import RunDir
from aipo_ray.storage import shards as layout
from aipo_ray.storage.schemas import SchemaError
from aipo_ray.storage.tables import write_table


def test_shards_are_sorted_distinct_ids_cut_the_same_way_every_time():
    ids = ["c", "a", "b", "a", "e", "d", "c"]  # candidates repeat their prompt's id
    assert layout.plan_shards(ids, 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert layout.plan_shards(reversed(ids), 2) == layout.plan_shards(ids, 2)
    assert layout.plan_shards([], 2) == []
    with pytest.raises(ValueError, match=r"storage\.shard_size"):
        layout.plan_shards(ids, 0)


def test_markers_commit_shards_and_must_match_the_plan(tmp_path):
    rd = RunDir(str(tmp_path / "run"))
    d = rd.stage_path(1, "generations")
    write_table(rd.fs, d, pa.table({"prompt_id": ["a", "a", "b"]}), part=0)
    record = layout.write_marker(rd.fs, d, 0, ["a", "b"], {"rows": 3, "empty": 1})
    write_table(rd.fs, d, pa.table({"prompt_id": ["c"]}), part=1)  # no marker: unfinished

    assert layout.read_markers(rd.fs, d) == {0: record}
    assert layout.marker_matches(record, ["a", "b"])
    assert not layout.marker_matches(record, ["a", "b", "c"])  # another shard size
    assert layout.part_indices(rd.fs, d) == [0, 1]
    layout.remove_shard(rd.fs, d, 1)
    assert layout.part_indices(rd.fs, d) == [0]
    assert layout.read_prompt_ids(rd.fs, d) == ["a", "b"]
    assert layout.read_id_range(rd.fs, d, "b", "b")["prompt_id"].to_pylist() == ["b"]


def test_each_once_names_missing_repeated_and_unknown_prompts():
    layout.check_each_once(pa.table({"prompt_id": ["a", "b"]}), ["a", "b"], "rankings")
    with pytest.raises(SchemaError, match=r"rankings: 1 prompt ids missing: c; 1 prompt ids "
                                          r"repeated: a; 1 prompt ids not asked for: z"):
        layout.check_each_once(pa.table({"prompt_id": ["a", "a", "b", "z"]}), ["a", "b", "c"],
                               "rankings")
