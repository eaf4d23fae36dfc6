"""`model.tokenizer`, `model.chat_template`, `model.trust_remote_code` and `model.dtype` reach
every place θ_t is read: hf generation, vLLM request building, self-instruct, ref_logps and the
training encoder, eval, serve, the policy as judge and the prompts stage's token counts.

The separate tokenizer directory is a character-level tokenizer (one id per character), so ids
show which tokenizer made them; templates carry a marker, so text shows which template was used.
Paths through Ray use a config template that raises with the tokenizer's EOS in its message: the
error that comes back names both the template and the tokenizer directory.
"""

import pyarrow as pa
import pytest
import torch

from aipo_ray.config import (
    GenerationConfig,
    ModelConfig,
    RankingConfig,
    SelfInstructConfig,
    StorageConfig,
    load_config,
)
from aipo_ray.config.base import ConfigError
from aipo_ray.models import dtype_name, load_tokenizer, tokenizer_path, training_dtype

TOKDIR_EOS = "<|tokdir_end|>"
TOKDIR_TEMPLATE = (
    "TOKDIR-MARK{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|tokdir_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CFG_TEMPLATE = TOKDIR_TEMPLATE.replace("TOKDIR-MARK", "CFG-MARK")
RAISING_TEMPLATE = "{{ raise_exception('CFG-MARK ' ~ eos_token) }}"
PROMPT = "hi there"


@pytest.fixture(scope="session")
def char_tokenizer_dir(tmp_path_factory) -> str:
    """A character-level tokenizer with its own EOS and a TOKDIR-MARK chat template, no pad."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|tokdir_unk|>", "<|im_start|>", TOKDIR_EOS]
    vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)] + ["\n"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|tokdir_unk|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=TOKDIR_EOS,
                                        unk_token="<|tokdir_unk|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = TOKDIR_TEMPLATE
    target = tmp_path_factory.mktemp("char-tokenizer")
    tokenizer.save_pretrained(target)
    return str(target)


@pytest.fixture(scope="session")
def model_cfg(tiny_llama_path, char_tokenizer_dir) -> ModelConfig:
    """θ_t = the tiny Llama, read with the character tokenizer and the CFG-MARK template."""
    return ModelConfig(path=tiny_llama_path, tokenizer=char_tokenizer_dir,
                       chat_template=CFG_TEMPLATE)


@pytest.fixture(scope="session")
def expected_ids(char_tokenizer_dir) -> list[int]:
    """The prompt ids the model must see: CFG-MARK text, character ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(char_tokenizer_dir)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                   add_generation_prompt=True, chat_template=CFG_TEMPLATE)
    assert text.startswith("CFG-MARK") and len(tok(text, add_special_tokens=False)["input_ids"]) > 30
    return list(tok(text, add_special_tokens=False)["input_ids"])


def run_config(tmp_path, model: ModelConfig, *overrides: str):
    items = [f"model.path={model.path}", f"run_dir={tmp_path / 'run'}"]
    if model.tokenizer:
        items.append(f"model.tokenizer={model.tokenizer}")
    config = load_config(None, [*items, *overrides])
    return config.model_copy(update={"model": model.model_copy(update={"dtype": config.model.dtype})})


# --- the loader itself -------------------------------------------------------------------------

def test_load_tokenizer_takes_the_tokenizer_dir_its_template_and_pads_with_eos(
        tiny_llama_path, char_tokenizer_dir):
    tok = load_tokenizer(ModelConfig(path=tiny_llama_path, tokenizer=char_tokenizer_dir),
                         tiny_llama_path, padding_side="left")
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False)
    assert text.startswith("TOKDIR-MARK")
    assert tok.pad_token == TOKDIR_EOS and tok.padding_side == "left"


def test_config_chat_template_wins_over_the_tokenizers_own(model_cfg, tiny_llama_path):
    tok = load_tokenizer(model_cfg, tiny_llama_path)
    assert tok.chat_template == CFG_TEMPLATE


def test_tokenizer_uris_resolve_like_model_uris(tiny_llama_path, smollm2_path):
    builtin = ModelConfig(path=tiny_llama_path, tokenizer="builtin:smollm2-135m-instruct")
    assert tokenizer_path(builtin, tiny_llama_path) == smollm2_path
    # tokenizer == path means θ_t's own copy, unless there is no θ_t directory to read it from
    same = ModelConfig(path=smollm2_path, tokenizer=smollm2_path)
    assert tokenizer_path(same, tiny_llama_path) == tiny_llama_path
    assert tokenizer_path(same, None) == smollm2_path


def test_dtype_precedence_stage_then_model_then_device():
    bf16 = ModelConfig(path="m", dtype="bfloat16")
    assert dtype_name(bf16, on_gpu=False) == "bfloat16"
    assert dtype_name(bf16, on_gpu=False, stage_dtype="float32") == "float32"
    assert dtype_name(ModelConfig(path="m"), on_gpu=True) == "bfloat16"
    assert dtype_name(None, on_gpu=False) == "float32"
    assert training_dtype(bf16, "auto", on_gpu=False) == torch.bfloat16
    assert training_dtype(bf16, "fp32", on_gpu=True) == torch.float32


def test_float16_with_auto_training_precision_is_rejected_naming_the_keys():
    with pytest.raises(ConfigError, match=r"model\.dtype.*training\.mixed_precision"):
        load_config(None, ["model.path=m", "model.dtype=float16"])
    ok = load_config(None, ["model.path=m", "model.dtype=float16", "training.mixed_precision=fp32"])
    assert training_dtype(ok.model, ok.training.mixed_precision, on_gpu=False) == torch.float32


# --- consumers ---------------------------------------------------------------------------------

def first_forward_ids(model: torch.nn.Module) -> list:
    """Records the input ids of the model's forward calls (a real hook, the model still runs)."""
    seen: list = []
    model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    return seen


def test_hf_generator_feeds_the_configured_template_and_tokenizer(model_cfg, expected_ids):
    from aipo_ray.generation.base import Sampling
    from aipo_ray.generation.hf import HFGenerator

    sampling = Sampling(n=1, max_tokens=2, temperature=0.0, top_p=1.0, seed=0)
    gen = HFGenerator(model_cfg.path, sampling, model=model_cfg)
    seen = first_forward_ids(gen.model)
    out = gen({"prompt_id": ["p0"], "prompt": [PROMPT]})
    assert pa.table(out).num_rows == 1
    assert seen[0][0].tolist() == expected_ids


def test_hf_generator_loads_model_dtype_and_generation_dtype_wins(tiny_llama_path):
    from aipo_ray.generation.base import Sampling
    from aipo_ray.generation.hf import HFGenerator

    sampling = Sampling(n=1, max_tokens=2, temperature=0.0, top_p=1.0, seed=0)
    bf16 = ModelConfig(path=tiny_llama_path, dtype="bfloat16")
    gen = HFGenerator(tiny_llama_path, sampling, model=bf16)
    assert gen.model.dtype == torch.bfloat16
    assert pa.table(gen({"prompt_id": ["p0"], "prompt": [PROMPT]})).num_rows == 1
    assert HFGenerator(tiny_llama_path, sampling, dtype="float32", model=bf16).model.dtype == torch.float32


def test_vllm_requests_and_engine_use_the_configured_tokenizer(model_cfg, expected_ids,
                                                                char_tokenizer_dir):
    from aipo_ray.generation.base import Sampling
    from aipo_ray.generation.vllm_engine import _requests, engine_kwargs

    tokenizer = load_tokenizer(model_cfg, model_cfg.path)
    sampling = Sampling(n=2, max_tokens=4, temperature=1.0, top_p=1.0, seed=0)
    table = _requests(pa.table({"prompt_id": ["p0"], "prompt": [PROMPT]}), tokenizer, sampling)
    assert table.column("tokenized_prompt").to_pylist() == [expected_ids, expected_ids]

    cfg = GenerationConfig(backend="vllm")
    remote = model_cfg.model_copy(update={"dtype": "bfloat16", "trust_remote_code": True})
    kwargs = engine_kwargs(cfg, remote, tokenizer.name_or_path)
    assert kwargs["tokenizer"] == char_tokenizer_dir and kwargs["trust_remote_code"] is True
    assert kwargs["dtype"] == "bfloat16"
    assert engine_kwargs(cfg.model_copy(update={"dtype": "float32"}), remote)["dtype"] == "float32"


def test_training_and_reference_encode_with_the_configured_template(tmp_path, model_cfg,
                                                                    expected_ids):
    from aipo_ray.training.model_io import load_policy, make_encoder

    config = run_config(tmp_path, model_cfg)
    _, tokenizer, _ = load_policy(config, model_cfg.path)
    pair = make_encoder(config, tokenizer).encode(PROMPT, "yes", "no")
    assert pair.prompt == expected_ids
    assert tokenizer.decode(pair.chosen).startswith("yes" + TOKDIR_EOS)


def test_reference_scorer_loads_bf16_when_model_dtype_says_so(tmp_path, tiny_llama_path):
    from aipo_ray.training.reference import ReferenceScorer

    config = run_config(tmp_path, ModelConfig(path=tiny_llama_path), "model.dtype=bfloat16")
    scorer = ReferenceScorer(config, tiny_llama_path)
    assert next(scorer.scorer.parameters()).dtype == torch.bfloat16
    import numpy as np

    out = scorer({"prompt_id": np.array(["p0"]), "prompt": np.array([PROMPT]),
                  "chosen": np.array(["yes"]), "rejected": np.array(["no"])})
    assert np.isfinite(out["ref_chosen_logp"]).all()


def test_serve_builds_prompts_with_the_configured_template(model_cfg, expected_ids):
    from aipo_ray.serve.backends import HFChat

    chat = HFChat(model_cfg.path, model_cfg)
    ids = chat.prompt_ids([{"role": "user", "content": PROMPT}])["input_ids"][0].tolist()
    assert ids == expected_ids
    assert chat.complete([{"role": "user", "content": PROMPT}], 2, 0.0, 1.0, [], None).prompt_tokens \
        == len(expected_ids)


def test_policy_judge_reads_the_policy_as_configured(model_cfg):
    from aipo_ray.ranking import build_ranker

    cfg = RankingConfig(backend="llm_judge", model="policy", dtype="auto")
    judge = build_ranker(cfg, model_cfg.path, model=model_cfg).compare.__self__
    text = judge.tokenizer.decode(judge.encode(PROMPT, "a", "b"))
    assert text.startswith("CFG-MARK") and TOKDIR_EOS in text


def test_prompts_stage_counts_tokens_with_the_configured_tokenizer(tmp_path, model_cfg):
    from aipo_ray.pipeline.stage import StageContext
    from aipo_ray.pipeline.stages.prompts import token_counts
    from aipo_ray.storage import RunDir

    config = run_config(tmp_path, model_cfg)
    ctx = StageContext(config, RunDir(str(tmp_path / "run"), StorageConfig()), iteration=1)
    assert token_counts([PROMPT, "abc"], ctx) == [len(PROMPT), 3]  # one id per character


# --- through Ray: the template raises, naming itself and the tokenizer's EOS --------------------

@pytest.fixture(scope="module")
def raising_model(tiny_llama_path, char_tokenizer_dir) -> ModelConfig:
    return ModelConfig(path=tiny_llama_path, tokenizer=char_tokenizer_dir,
                       chat_template=RAISING_TEMPLATE)


MARK = r"CFG-MARK <\|tokdir_end\|>"


def test_self_instruct_requests_use_the_configured_template(ray_cluster, raising_model):
    from aipo_ray.data.self_instruct import self_instruct

    generation = GenerationConfig(backend="hf", max_tokens=4, batch_size=4, max_retries=0)
    cfg = SelfInstructConfig(num_instructions=2, num_few_shot=2, max_tokens=8)
    with pytest.raises(Exception, match=MARK):
        self_instruct([f"seed {i}" for i in range(4)], [], raising_model.path, cfg, generation,
                      seed=0, iteration=1, model=raising_model)


def test_eval_generation_uses_the_configured_template(tmp_path, ray_cluster, raising_model):
    import pandas as pd

    from aipo_ray.report.evaluate import default_generate

    config = run_config(tmp_path, raising_model, "generation.backend=hf",
                        "generation.max_retries=0", "eval.max_tokens=4")
    run = default_generate(config)
    with pytest.raises(Exception, match=MARK):
        run(pd.DataFrame({"prompt_id": ["p0"], "prompt": [PROMPT]}), raising_model.path)
