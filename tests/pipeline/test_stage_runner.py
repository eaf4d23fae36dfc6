"""run_stage: done stages are skipped, half-written ones redone, bad inputs refused loudly."""

import pyarrow as pa
import pytest

from aipo_ray.config import load_config
from aipo_ray.pipeline import Stage, StageContext, StageError, StageResult, run_stage
from aipo_ray.storage import RunDir, make_prompt_id, read_rejected, rejected_rows


def prompts_table(texts):
    return pa.table({
        "prompt_id": [make_prompt_id(t) for t in texts], "prompt": texts,
        "source": ["test"] * len(texts), "iteration": [1] * len(texts),
    })


class WritePrompts(Stage):
    """A stage writing a fixed prompt table, rejecting prompts that contain 'bad'."""

    name = "prompts"
    inputs = ()
    config_keys = ("prompts",)

    def __init__(self, texts, fail_after_write=False):
        self.texts = texts
        self.calls = 0
        self.fail_after_write = fail_after_write

    def run(self, ctx):
        self.calls += 1
        good = [t for t in self.texts if "bad" not in t]
        bad = [{"prompt_id": make_prompt_id(t), "prompt": t, "reason": "contains bad"}
               for t in self.texts if "bad" in t]
        ctx.write("prompts", prompts_table(good))
        ctx.write_rejected("prompts", rejected_rows(bad, source="test"))
        if self.fail_after_write:
            raise RuntimeError("crash after the part file, before _SUCCESS")
        return StageResult(rows_in=len(self.texts), rows_out=len(good),
                           rejected={"contains bad": len(bad)} if bad else {})


@pytest.fixture
def ctx(tmp_path):
    config = load_config(None, ["model.path=unused", f"run_dir={tmp_path / 'run'}"])
    return StageContext(config=config, run_dir=RunDir(str(tmp_path / "run")), iteration=1)


def test_finished_stage_is_skipped_on_rerun(ctx):
    stage = WritePrompts(["a b c", "d e f"])
    first = run_stage(stage, ctx)
    second = run_stage(stage, ctx)
    assert stage.calls == 1
    assert second["skipped"] is True
    assert second["fingerprint"] == first["fingerprint"]
    assert ctx.read("prompts").num_rows == 2


def test_config_change_invalidates_done_stage(ctx):
    stage = WritePrompts(["a b c"])
    run_stage(stage, ctx)
    ctx.config = ctx.config.model_copy(
        update={"prompts": ctx.config.prompts.model_copy(update={"max_prompt_chars": 10})}
    )
    run_stage(stage, ctx)
    assert stage.calls == 2


def test_half_written_stage_is_cleared_and_rows_appear_once(ctx):
    crashing = WritePrompts(["one two", "three four", "five six"], fail_after_write=True)
    with pytest.raises(RuntimeError):
        run_stage(crashing, ctx)
    # A part file exists but no _SUCCESS: readers refuse the table.
    with pytest.raises(FileNotFoundError, match="no _SUCCESS"):
        ctx.read("prompts")
    # A stray part from the crashed attempt must not survive the rerun.
    ctx.write("prompts", prompts_table(["stray row"]), part=7)
    rec = run_stage(WritePrompts(["one two", "three four", "five six"]), ctx)
    table = ctx.read("prompts")
    assert sorted(table.column("prompt").to_pylist()) == ["five six", "one two", "three four"]
    assert len(set(table.column("prompt_id").to_pylist())) == 3
    assert rec["rows_out"] == 3


def test_rejected_rows_are_kept_with_reasons_and_counted(ctx):
    rec = run_stage(WritePrompts(["good one", "bad one", "good two"]), ctx)
    assert rec["rejected"] == {"contains bad": 1}
    rejected = read_rejected(ctx.run_dir.fs, ctx.stage_path("prompts"))
    assert rejected.column("reason").to_pylist() == ["contains bad"]
    assert "bad one" in rejected.column("data").to_pylist()[0]


def test_too_many_rejected_rows_fail_the_stage_without_success(ctx):
    ctx.config = ctx.config.model_copy(update={"max_bad_row_fraction": 0.25})
    with pytest.raises(StageError, match=r"rejected 2 of 3 rows .* see .*_rejected"):
        run_stage(WritePrompts(["bad a", "bad b", "fine"]), ctx)
    assert ctx.run_dir.stage_success(1, "prompts") is None
