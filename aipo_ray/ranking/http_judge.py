"""A judge model served elsewhere, over an OpenAI-compatible chat-completions endpoint.

    ranking: {backend: http_judge, url: http://127.0.0.1:8000/v1, model: judge,
              judge_prompt: self_rewarding, api_key_env: JUDGE_API_KEY}

Pointwise (`judge_prompt: self_rewarding`, or `judge_mode: pointwise`): one request per candidate
with the Self-Rewarding LLM-as-a-Judge prompt, score = the points the judge gives (0..5).
Pairwise (the default A/B prompt): one request per ordered pair, both orders, aggregated like
PairRM (`ranking.mode` full or tournament). Requests are chat completions at temperature 0,
`ranking.max_concurrency` in flight per ranking replica.

Failures: a 429, a 5xx, a timeout (`ranking.request_timeout_s`) or a connection error is retried
`ranking.request_retries` times with exponential backoff (the server's Retry-After when it sends
one); after that the batch fails with an HTTPJudgeError naming the endpoint and the last error
(the ranking pool retries the batch, then the stage fails and can be resumed). Any other 4xx
fails at once: a wrong URL, model name or key does not get better by asking again. A reply that
cannot be read is asked again once, then the prompt is rejected with the reply quoted (judge.py).

The API key is read from the environment variable `ranking.api_key_env` names, where the ranker
runs, and sent as a Bearer token; the config (and so run.json) holds only the variable's name.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .judge import PairwiseLetterJudge, PointwiseJudge
from .judge_prompts import judge_max_tokens, judge_mode
from .registry import RankerContext, register_ranker

MAX_BACKOFF_S = 30.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class HTTPJudgeError(RuntimeError):
    """The judge server could not be reached or refused the request; names the endpoint."""


def chat_endpoint(url: str) -> str:
    """`<base>/chat/completions` for a base URL (…/v1); a full endpoint URL is kept as it is."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


class ChatClient:
    """Chat completions from one endpoint: `replies(messages)` sends each message as one user
    turn, at most `max_concurrency` at a time, and returns the replies in order."""

    def __init__(self, url: str, model: str, api_key: str | None = None, max_tokens: int = 256,
                 timeout_s: float = 60.0, retries: int = 3, max_concurrency: int = 8,
                 backoff_s: float = 0.5):
        import httpx

        self.endpoint, self.model, self.max_tokens = chat_endpoint(url), model, max_tokens
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            timeout=timeout_s, headers=headers,
            limits=httpx.Limits(max_connections=max_concurrency,
                                max_keepalive_connections=max_concurrency),
        )
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="http_judge")
        self._lock = threading.Lock()
        self.requests = 0  # HTTP requests sent, retries included

    def replies(self, messages: list[str]) -> list[str]:
        return list(self._pool.map(self.reply, messages))

    def reply(self, message: str) -> str:
        """The judge's reply to one user message; retries what may pass, raises the rest."""
        import httpx

        body = {"model": self.model, "messages": [{"role": "user", "content": message}],
                "temperature": 0, "max_tokens": self.max_tokens}
        attempts = 1 + self.retries
        for attempt in range(attempts):
            retry_after = None
            with self._lock:
                self.requests += 1
            try:
                response = self._http.post(self.endpoint, json=body)
            except httpx.TimeoutException:
                last = f"no reply within ranking.request_timeout_s = {self.timeout_s:g}s"
            except httpx.TransportError as err:  # refused, reset, DNS
                last = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    return completion_text(response)
                last = f"HTTP {response.status_code}: {response.text[:200]!r}"
                if response.status_code != 429 and response.status_code < 500:
                    raise HTTPJudgeError(
                        f"http_judge: POST {self.endpoint} (model {self.model!r}) answered {last}; "
                        "not retried: check ranking.url, ranking.model and ranking.api_key_env")
                retry_after = response.headers.get("retry-after")
            if attempt + 1 < attempts:
                time.sleep(self._delay(attempt, retry_after))
        raise HTTPJudgeError(
            f"http_judge: POST {self.endpoint} (model {self.model!r}) failed {attempts} times "
            f"(1 + ranking.request_retries = {self.retries}); last: {last}")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff with a little jitter, or the server's Retry-After (seconds)."""
        try:
            if retry_after is not None:
                return min(max(float(retry_after), 0.0), MAX_BACKOFF_S)
        except ValueError:  # an HTTP date: fall back to our own schedule
            pass
        return min(self.backoff_s * 2**attempt, MAX_BACKOFF_S) * (1 + 0.1 * random.random())

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._http.close()


def completion_text(response) -> str:
    """The assistant's text of a chat completion; a body that is not one comes back described,
    so the prompt is rejected (or asked again) with what the server actually sent."""
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"<not a chat completion: {response.text[:120]}>"
    return content if isinstance(content, str) else ""


def api_key(cfg) -> str | None:
    """The key in the environment variable `ranking.api_key_env` names (None when unnamed)."""
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise HTTPJudgeError(
            f"ranking.api_key_env names {cfg.api_key_env}, which is not set where the ranker "
            "runs; export it on every node (or in the job's runtime_env)")
    return key


def check_http_judge(cfg) -> None:
    """Config validation: a URL, a served model name, an env var NAME, one prompt per mode."""
    from aipo_ray.config import RankingConfig

    if not cfg.url:
        raise ValueError("ranking.backend 'http_judge' needs ranking.url, the judge server's "
                         "OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1)")
    if not cfg.url.startswith(("http://", "https://")):
        raise ValueError(f"ranking.url {cfg.url!r}: expected an http:// or https:// URL")
    if not cfg.model or cfg.model == RankingConfig.model_fields["model"].default:
        raise ValueError("ranking.backend 'http_judge' needs ranking.model, the name the server "
                         "serves the judge under (vllm serve --served-model-name), not the PairRM "
                         "default")
    if cfg.api_key_env is not None and not _ENV_NAME.fullmatch(cfg.api_key_env):
        # The value is not echoed: it may be a key pasted by mistake.
        raise ValueError("ranking.api_key_env must be the NAME of an environment variable "
                         "holding the key (e.g. JUDGE_API_KEY), never the key itself")
    judge_mode(cfg)


@register_ranker("http_judge", check=check_http_judge)
def build_http_judge(cfg, ctx: RankerContext):
    """The judge at `ranking.url` serving `ranking.model`, pointwise or pairwise."""
    mode = judge_mode(cfg)
    client = ChatClient(cfg.url, cfg.model, api_key(cfg), judge_max_tokens(cfg, mode),
                        cfg.request_timeout_s, cfg.request_retries, cfg.max_concurrency)
    if mode == "pointwise":
        return PointwiseJudge(client.replies, parse_retries=1)
    return PairwiseLetterJudge(client.replies, cfg.mode, parse_retries=1)
