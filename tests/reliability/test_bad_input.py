"""Bad input through the prompts stage: a corpus of every kind of bad row, and hypothesis-fuzzed
files. Bad rows go to `_rejected/` with a reason and their line; the stage fails with a clear
message past `max_bad_row_fraction`; nothing is dropped silently (rows_in = rows_out + rejected).

Single-reader cases (CSV, Parquet, datasets dirs) are in tests/data/test_sources.py; a config with
every kind of error at once is tests/test_config.py::test_every_problem_is_reported_at_once.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aipo_ray.config import load_config
from aipo_ray.data.sources import PromptSourceError, load_prompts
from aipo_ray.pipeline import StageContext, StageError, run_stage
from aipo_ray.pipeline.stages.prompts import PromptsStage
from aipo_ray.storage import RunDir
from aipo_ray.storage.tables import read_rejected

pytestmark = pytest.mark.reliability

GOOD = [json.dumps({"prompt": f"Good question number {i}?"}).encode() for i in range(6)]
# (line, reason prefix) of every kind of bad row; line numbers follow the good ones.
BAD = [
    (b'{"prompt": "unterminated', "malformed_json"),
    (b'{"prompt": 123}', "wrong_type"),
    (b'["a", "list"]', "wrong_type"),
    (b'{"prompt": "   "}', "empty_prompt"),
    (json.dumps({"prompt": "x" * 101}).encode(), "too_long"),
    (b'{"prompt": "caf\xe9 au lait"}', "invalid_utf8"),
    (b'{"text": "no prompt field"}', "missing_field"),
    (GOOD[0], "duplicate"),
    (json.dumps({"prompt": "  Good question number 1?  "}).encode(), "duplicate"),
]


def _context(tmp_path, lines: list[bytes], fraction: float) -> StageContext:
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")  # a trailing blank line is not a row
    config = load_config(None, [
        "model.path=unused", f"run_dir={tmp_path / 'run'}", "self_instruct.enabled=false",
        f"prompts.sources=[{{path: {path}}}]", "prompts.max_prompt_chars=100",
        f"max_bad_row_fraction={fraction}",
    ])
    return StageContext(config=config, run_dir=RunDir(str(tmp_path / "run")), iteration=1)


def test_every_kind_of_bad_row_is_rejected_with_its_reason_and_line(tmp_path):
    ctx = _context(tmp_path, GOOD + [line for line, _ in BAD], fraction=0.9)
    record = run_stage(PromptsStage(self_instruct=False), ctx)

    rejected = read_rejected(ctx.run_dir.fs, ctx.run_dir.path("iter_001", "prompts")).to_pylist()
    got = sorted((r["row"], r["reason"].split(":")[0]) for r in rejected)
    assert got == [(len(GOOD) + 1 + i, reason) for i, (_, reason) in enumerate(BAD)]
    assert all(r["source"].endswith("prompts.jsonl") for r in rejected)
    assert record["rows_in"] == len(GOOD) + len(BAD)
    assert record["rows_out"] == len(GOOD) == ctx.read("prompts").num_rows
    assert record["rows_in"] == record["rows_out"] + record["rejected_total"]
    assert record["rejected"] == {"malformed_json": 1, "wrong_type": 2, "empty_prompt": 1,
                                  "too_long": 1, "invalid_utf8": 1, "missing_field": 1,
                                  "duplicate": 2}


def test_too_many_bad_rows_fail_the_stage_with_the_reasons_and_no_success(tmp_path):
    ctx = _context(tmp_path, GOOD + [line for line, _ in BAD], fraction=0.2)
    with pytest.raises(StageError, match=r"rejected 9 of 15 rows \(60% > max_bad_row_fraction "
                                         r"20%\); reasons: duplicate: 2, empty_prompt: 1.*_rejected"):
        run_stage(PromptsStage(self_instruct=False), ctx)
    assert ctx.run_dir.stage_success(1, "prompts") is None
    rejected = read_rejected(ctx.run_dir.fs, ctx.run_dir.path("iter_001", "prompts"))
    assert rejected.num_rows == len(BAD)  # the evidence stays for the user


def test_a_missing_file_fails_the_stage_naming_the_path(tmp_path):
    ctx = _context(tmp_path, GOOD, fraction=0.5)
    missing = tmp_path / "nowhere.jsonl"
    ctx.config.prompts.sources[0].path = str(missing)
    with pytest.raises(PromptSourceError, match=r"nowhere\.jsonl"):
        run_stage(PromptsStage(self_instruct=False), ctx)
    assert ctx.run_dir.stage_success(1, "prompts") is None


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=3),
    max_leaves=6,
)
_lines = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=120).map(lambda t: json.dumps({"prompt": t}).encode()),
    st.sampled_from(GOOD),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_lines, max_size=25))
def test_fuzzed_files_never_crash_and_account_for_every_row(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "p.jsonl"
    path.write_bytes(b"\n".join(lines))
    config = load_config(None, ["model.path=unused", f"prompts.sources=[{{path: {path}}}]",
                                "prompts.max_prompt_chars=100"])
    loaded = load_prompts(config.prompts)
    rows = sum(1 for line in b"\n".join(lines).split(b"\n") if line.strip())
    assert loaded.rows_in == rows == loaded.table.num_rows + len(loaded.rejected)
    assert all(r["reason"] and r["_row"] >= 1 for r in loaded.rejected)
    ids = loaded.table["prompt_id"].to_pylist()
    assert len(ids) == len(set(ids))
    assert all(0 < len(p.strip()) <= 100 for p in loaded.table["prompt"].to_pylist())
