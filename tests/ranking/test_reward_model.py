"""The reward_model ranker: tiny random Llama and Qwen3 sequence-classification models saved to
disk with SmolLM2's tokenizer and chat template (whose pad token is its EOS, <|im_end|>), scored
against plain transformers one conversation at a time."""

from pathlib import Path

import numpy as np
import pytest
import torch

from aipo_ray.config import RankingConfig
from aipo_ray.ranking import RewardModelRanker, build_ranker

PROMPTS = ["what is one plus two?", "write a short poem about the sea", "say yes", "sort: five two"]
CANDIDATES = [
    ["three", "it is four", "one plus two is three, because counting one, two, three"],
    ["the sea is blue and wide", "waves", "Salt on the wind,\nthe tide turns over stones"],
    ["yes", "no", "yes yes yes yes yes yes"],
    ["two five", "five two", "2 5"],
]


def build_reward_model(target: Path, tokenizer_dir: str, arch: str, num_labels: int = 1) -> str:
    """A random sequence-classification model, pad = EOS, saved with SmolLM2's tokenizer."""
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForSequenceClassification,
        Qwen3Config,
        Qwen3ForSequenceClassification,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the case the ranker must handle
    params = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, num_labels=num_labels,
        initializer_range=0.2,  # rewards of order one, so 1e-4 is a real tolerance
    )
    classes = {"llama": (LlamaConfig, LlamaForSequenceClassification),
               "qwen3": (Qwen3Config, Qwen3ForSequenceClassification)}
    config_cls, model_cls = classes[arch]
    torch.manual_seed(0)
    model_cls(config_cls(**params)).to(torch.float32).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return str(target)


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def rm_path(request, tmp_path_factory, smollm2_path) -> str:
    return build_reward_model(tmp_path_factory.mktemp(f"rm-{request.param}"), smollm2_path, request.param)


@pytest.fixture(scope="module")
def reference(rm_path):
    """Plain transformers, one conversation per forward: the model card's loop."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(rm_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(rm_path)

    @torch.no_grad()
    def score(prompt: str, response: str) -> float:
        conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        tok = tokenizer.apply_chat_template(conv, tokenize=True, return_tensors="pt", return_dict=True)
        return float(model(**tok).logits[0, 0])

    return score


def expected(reference, prompts=PROMPTS, candidates=CANDIDATES) -> np.ndarray:
    return np.array([[reference(p, c) for c in cands] for p, cands in zip(prompts, candidates, strict=True)])


def test_scores_equal_plain_transformers_batched_and_unbatched(rm_path, reference):
    want = expected(reference)
    assert want.std() > 1e-2  # the random model tells candidates apart
    for batch_size in (1, 2, 5, 64):
        ranker = RewardModelRanker.from_pretrained(rm_path, batch_size=batch_size)
        assert ranker._split  # base model + own score head at the last real token
        np.testing.assert_allclose(ranker.score(PROMPTS, CANDIDATES), want, atol=1e-4, rtol=0)
    # one prompt at a time gives the same as all prompts together
    one = np.concatenate([ranker.score([p], [c]) for p, c in zip(PROMPTS, CANDIDATES, strict=True)])
    np.testing.assert_allclose(one, want, atol=1e-4, rtol=0)


def test_a_head_it_cannot_reach_is_batched_without_padding(rm_path, reference):
    """The fallback for models without a `score` layer: only equal-length conversations share a
    forward, and the model's own head reads them."""
    ranker = RewardModelRanker.from_pretrained(rm_path, batch_size=4)
    ranker._split = False
    prompts, candidates = ["a b", "a c", "say yes"], [["x", "y"], ["x", "y"], ["yes", "no"]]
    seqs = [ranker.encode(p, c) for p, cands in zip(prompts, candidates, strict=True) for c in cands]
    batches = ranker._batches(seqs)
    assert all(len({len(seqs[k]) for k in b}) == 1 for b in batches) and max(map(len, batches)) > 1
    np.testing.assert_allclose(ranker.score(prompts, candidates), expected(reference, prompts, candidates),
                               atol=1e-4, rtol=0)


def test_built_from_config_and_best_worst(rm_path, reference):
    cfg = RankingConfig(backend="reward_model", model=rm_path, pair_batch_size=3)
    ranker = build_ranker(cfg)
    assert isinstance(ranker, RewardModelRanker)
    ranking = ranker.best_worst(PROMPTS, CANDIDATES)
    want = expected(reference)
    np.testing.assert_array_equal(ranking.best_idx, want.argmax(-1))
    np.testing.assert_array_equal(ranking.worst_idx, want.argmin(-1))
    assert (ranking.comparisons == 0).all()


def test_padding_never_decides_the_position_even_when_a_conversation_ends_in_the_pad_token(rm_path):
    """With a template that ends on <|im_end|> (= pad = EOS), transformers' own head skips that
    token (it looks for the last non-pad id); the ranker reads the last real token, batched or
    not: what the model computes for the whole conversation."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(rm_path)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    model = AutoModelForSequenceClassification.from_pretrained(rm_path, dtype=torch.float32).eval()
    ranker = RewardModelRanker(model, tokenizer, batch_size=4)
    ids = [ranker.encode(p, c) for p, cands in zip(PROMPTS, CANDIDATES, strict=True) for c in cands]
    assert all(seq[-1] == tokenizer.pad_token_id for seq in ids)
    with torch.no_grad():
        hf_head = [float(model(input_ids=torch.tensor([s])).logits[0, 0]) for s in ids]
        model.config.pad_token_id = None  # now the head reads position -1 (batch size 1 only)
        last = [float(model(input_ids=torch.tensor([s])).logits[0, 0]) for s in ids]
        model.config.pad_token_id = tokenizer.pad_token_id
    assert np.abs(np.array(hf_head) - np.array(last)).max() > 1e-3  # the pitfall is real here
    np.testing.assert_allclose(ranker.score_sequences(ids), last, atol=1e-4, rtol=0)


def test_left_truncation_keeps_the_response_whole(rm_path, reference):
    ranker = RewardModelRanker.from_pretrained(rm_path, max_length=48)
    tokenizer = ranker.tokenizer
    prompt = "START " + " ".join(f"word{k}" for k in range(60)) + " the real question END"
    response = "the response, kept whole"
    full = ranker._template(prompt, response)
    assert len(full) > 48
    ids = ranker.encode(prompt, response)
    assert len(ids) <= 48
    text = tokenizer.decode(ids)
    assert "START" not in text and "the real question END" in text
    assert text.rstrip().endswith(response + "<|im_end|>")
    # the score is the plain model's score of the conversation with the prompt's kept tail
    kept_prompt = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert prompt.endswith(kept_prompt)
    got = ranker.score([prompt], [[response]])[0, 0]
    assert got == pytest.approx(reference(kept_prompt, response), abs=1e-4)
    # a response longer than max_length on its own: the last max_length tokens, end of turn kept
    long_response = " ".join(f"r{k}" for k in range(80))
    ids = ranker.encode(prompt, long_response)
    assert len(ids) == 48 and ids == ranker._template("", long_response)[-48:]


def test_a_model_with_two_outputs_is_refused(tmp_path, smollm2_path):
    path = build_reward_model(tmp_path / "rm2", smollm2_path, "llama", num_labels=2)
    with pytest.raises(ValueError, match="num_labels = 2"):
        RewardModelRanker.from_pretrained(path)


def test_a_tokenizer_without_chat_template_is_refused(rm_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(rm_path)
    tokenizer.chat_template = None
    model = AutoModelForSequenceClassification.from_pretrained(rm_path)
    with pytest.raises(ValueError, match="no chat template"):
        RewardModelRanker(model, tokenizer)


@pytest.mark.parametrize("model", [None, "policy"])
def test_config_needs_a_reward_model(model):
    from pydantic import ValidationError

    kwargs = {} if model is None else {"model": model}
    with pytest.raises(ValidationError, match=r"ranking\.model set to a sequence-classification"):
        RankingConfig(backend="reward_model", **kwargs)
    with pytest.raises(ValidationError, match="max_length"):
        RankingConfig(backend="reward_model", model="some/rm", max_length=8)


def test_reward_model_as_a_ray_data_actor_pool(ray_cluster, rm_path, reference):
    import ray

    from aipo_ray.ranking import rank_pool

    rows = [{"prompt_id": f"p{k}", "prompt": p, "candidates": c}
            for k, (p, c) in enumerate(zip(PROMPTS, CANDIDATES, strict=True))]
    rows.append({"prompt_id": "p-two", "prompt": "say no", "candidates": ["no", "yes"]})  # another N
    cfg = RankingConfig(backend="reward_model", model=rm_path, batch_size=2, pair_batch_size=4,
                        num_replicas=1)
    out = {r["prompt_id"]: r for r in rank_pool(ray.data.from_items(rows).repartition(2), cfg).take_all()}
    assert sorted(out) == sorted(r["prompt_id"] for r in rows)
    for row in rows:
        want = [reference(row["prompt"], c) for c in row["candidates"]]
        got = out[row["prompt_id"]]
        np.testing.assert_allclose(list(got["scores"]), want, atol=1e-4, rtol=0)
        assert got["best_idx"] == int(np.argmax(want))
