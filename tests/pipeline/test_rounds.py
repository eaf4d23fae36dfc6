"""Sampling rounds (pipeline/rounds.py): with `pairs.target`, the data stages run again on new
prompts until that many pairs survive, and the iteration's tables are gathered from the rounds.

The chain is the real one up to `pairs` (fixed seed pool, hf generation on the tiny random
Llama, a callable judge that ties on about half the prompts so that one round falls short).
"""

import hashlib

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from aipo_ray.config import load_config
from aipo_ray.data.self_instruct import build_requests
from aipo_ray.pipeline.driver import run
from aipo_ray.pipeline.fingerprint import content_config
from aipo_ray.pipeline.plan import plan_run
from aipo_ray.pipeline.rounds import prompts_needed
from aipo_ray.pipeline.stage import round_table
from aipo_ray.pipeline.stages.generate import GenerateStage
from aipo_ray.pipeline.stages.pairs import PairsStage
from aipo_ray.pipeline.stages.prompts import PromptsStage
from aipo_ray.pipeline.stages.rank import RankStage
from aipo_ray.pipeline.status import run_status
from aipo_ray.storage import RunDir

DATA_STAGES = ("prompts", "generations", "rankings", "pairs")


def data_chain(config, iteration):
    return [PromptsStage(self_instruct=False), GenerateStage(), RankStage(), PairsStage()]


def rounds_config(tmp_path, model, *extra):
    return load_config(None, [
        f"model.path={model}", f"run_dir={tmp_path / 'run'}", "iterations=1", "ray.num_cpus=2",
        "self_instruct.enabled=false", "prompts.per_iteration=4",
        "generation.backend=hf", "generation.num_candidates=2", "generation.max_tokens=6",
        "generation.temperature=1.0",
        "ranking.backend=callable", "ranking.callable=tests.report.judges:ties_on_odd_prompts",
        "pairs.target=5", "pairs.max_rounds=4", "pairs.drop_truncated=false",
        "max_bad_row_fraction=1.0", *extra,
    ])


def table(rd, name):
    return rd.read_stage_table(1, name)


def test_rounds_sample_until_the_target_and_gather_the_iteration_tables(
    tmp_path, ray_cluster, tiny_llama_path
):
    config = rounds_config(tmp_path, tiny_llama_path)
    run(config, data_chain)
    rd = RunDir(config.resolved_run_dir)

    rounds = []
    while rd.stage_success(1, round_table(len(rounds) + 1, "pairs")):
        rounds.append({n: table(rd, round_table(len(rounds) + 1, n)) for n in DATA_STAGES})
    assert len(rounds) >= 2  # 4 prompts at about half a pair each cannot give 5 pairs

    # Each later round asked for the missing pairs over the yield so far, with the margin.
    pairs = prompts = 0
    for k, r in enumerate(rounds):
        if k:
            assert r["prompts"].num_rows == prompts_needed(5, pairs, prompts)
        pairs, prompts = pairs + r["pairs"].num_rows, prompts + r["prompts"].num_rows
    assert pairs >= 5 and sum(r["pairs"].num_rows for r in rounds[:-1]) < 5

    # No prompt is taken twice; the iteration's tables are the rounds' in order, pairs cut at 5.
    ids = [p for r in rounds for p in r["prompts"]["prompt_id"].to_pylist()]
    assert len(ids) == len(set(ids))
    for name in ("prompts", "generations", "rankings"):
        assert table(rd, name).equals(pa.concat_tables([r[name] for r in rounds]))
    assert table(rd, "pairs").equals(pa.concat_tables([r["pairs"] for r in rounds]).slice(0, 5))
    gathered = rd.stage_success(1, "pairs")
    assert gathered["extra"]["rounds"] == len(rounds)
    assert gathered["extra"]["surplus"] == pairs - 5
    # The plan before a resume sees round 1 done (later rounds are sized only as they come).
    plan = plan_run(config, data_chain, rd, 1)
    assert [(e.stage, e.will_run) for e in plan] == [(round_table(1, n), False)
                                                     for n in DATA_STAGES]

    # `aipo status` lists the rounds first, round by round in pipeline order, then the chain.
    stages = run_status(rd)["iterations"][0]["stages"]
    listed = [name for name in stages if name.startswith("rounds/")]
    assert listed == [round_table(r, n) for r in range(1, len(rounds) + 1) for n in DATA_STAGES]
    assert all(stages[name]["done"] for name in listed)
    assert list(stages).index("rounds/01/prompts") < list(stages).index("prompts")

    # Only prompts that the judge did not tie on made pairs.
    for prompt in table(rd, "pairs")["prompt"].to_pylist():
        assert hashlib.sha256(prompt.encode()).digest()[0] % 2 == 0

    # Resuming computes nothing again. A run stopped before the last round's pairs were marked
    # done redoes only those: same fingerprint, so the gathered tables stay valid.
    def finished_at():
        return {(r, n): rd.stage_success(1, round_table(r, n))["finished_at"]
                for r in range(1, len(rounds) + 1) for n in DATA_STAGES}

    before, pairs_table = finished_at(), table(rd, "pairs")
    summary = run(config, data_chain)
    assert all(rec.get("skipped") for rec in summary.iterations[0]["stages"].values())
    assert finished_at() == before
    last = round_table(len(rounds), "pairs")
    rd.fs.rm_file(rd.path("iter_001", last, "_SUCCESS"))
    summary = run(config, data_chain)
    assert all(rec.get("skipped") for rec in summary.iterations[0]["stages"].values())
    redone = {key for key, at in finished_at().items() if at != before[key]}
    assert redone <= {(len(rounds), "pairs")} and rd.stage_success(1, last)
    assert table(rd, "pairs").equals(pairs_table)


def test_a_pool_used_up_ends_the_rounds_with_what_survived(tmp_path, ray_cluster,
                                                            tiny_llama_path, caplog):
    # Three seed prompts only: round 1 takes all of them, round 2 finds none left.
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(f'{{"prompt": "Write a short poem about {w}."}}\n'
                            for w in ("rain", "salt", "iron")))
    config = rounds_config(tmp_path, tiny_llama_path, f"prompts.sources=[{{path: {pool}}}]",
                           "prompts.per_iteration=3", "pairs.target=50")
    run(config, data_chain)
    rd = RunDir(config.resolved_run_dir)
    assert rd.stage_success(1, round_table(1, "pairs"))
    assert rd.stage_success(1, round_table(2, "prompts")) is None
    assert table(rd, "pairs").num_rows == table(rd, round_table(1, "pairs")).num_rows
    assert "the prompt pool is used up after 1 rounds" in caplog.text


def test_without_a_target_the_pairs_fingerprint_is_what_it_was():
    """The new keys are left out at their defaults, so finished runs of earlier versions keep
    their `pairs` stages (and everything after) valid."""
    base = load_config(None, ["model.path=m", "run_dir=/tmp/x"])
    assert set(content_config(base, ("pairs",))["pairs"]) == {
        "min_score_gap", "drop_ties", "max_pairs", "drop_truncated", "drop_empty"}
    targeted = load_config(None, ["model.path=m", "run_dir=/tmp/x", "pairs.target=10"])
    assert content_config(targeted, ("pairs",))["pairs"]["target"] == 10


def test_prompts_needed_scales_the_missing_pairs_by_the_yield_and_bounds_a_bad_round():
    assert prompts_needed(100, 40, 80) == 132  # 60 missing at 0.5 a prompt, +10%
    assert prompts_needed(100, 0, 80) == 1100  # no yield yet: taken as 0.1
    assert prompts_needed(10, 9, 10) == 2


@pytest.mark.parametrize("round_", [0, 1])
def test_a_later_self_instruct_round_asks_new_requests_with_new_ids(round_):
    from aipo_ray.config import SelfInstructConfig

    cfg = SelfInstructConfig(num_instructions=4, oversample=1.0, num_few_shot=2)
    seeds = [f"seed prompt number {i}" for i in range(20)]
    first = build_requests(seeds, [], cfg, seed=0, iteration=1, round=round_)
    assert first.equals(build_requests(seeds, [], cfg, seed=0, iteration=1))  # rounds 0, 1 alike
    second = build_requests(seeds, [], cfg, seed=0, iteration=1, round=2)
    assert second.equals(build_requests(seeds, [], cfg, seed=0, iteration=1, round=2))
    assert not set(first["prompt_id"].to_pylist()) & set(second["prompt_id"].to_pylist())
    assert pc.all(pc.starts_with(second["prompt_id"], "si-001-r02-")).as_py()
