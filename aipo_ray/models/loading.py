"""Loading θ_t and its tokenizer the same way in every stage: self-instruct, generation, ranking
with the policy as judge, ref_logps, training, eval and serve.

The `model` section of the config says how θ_t is read, whichever checkpoint θ_t is:

- `model.tokenizer`: where the tokenizer comes from (resolved like any model URI), else the
  checkpoint's own directory;
- `model.chat_template`: set on the tokenizer, so every `apply_chat_template` downstream uses it;
- `model.trust_remote_code`: passed to every `from_pretrained` (and to vLLM);
- `model.dtype`: the weights' dtype where no stage-specific setting says otherwise (`dtype_name`).

torch and transformers are imported inside the functions, so `aipo_ray.models` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aipo_ray.config import ModelConfig, StorageConfig

from .resolve import resolve_model_path

if TYPE_CHECKING:
    import torch

AUTO = "auto"
# training.mixed_precision's vocabulary, in model.dtype's.
_MIXED_PRECISION = {"auto": AUTO, "fp32": "float32", "bf16": "bfloat16"}


def dtype_name(model_cfg: ModelConfig | None, on_gpu: bool, stage_dtype: str = AUTO) -> str:
    """The dtype a stage loads θ_t in, by name ('float32', 'bfloat16', 'float16').

    Precedence: the stage's own setting (`generation.dtype`, `ranking.dtype`, the training
    precision) when it is not 'auto'; then `model.dtype` when it is not 'auto'; then bfloat16 on
    a GPU and float32 on a CPU.
    """
    for choice in (stage_dtype, model_cfg.dtype if model_cfg is not None else AUTO):
        if choice != AUTO:
            return choice
    return "bfloat16" if on_gpu else "float32"


def resolve_dtype(model_cfg: ModelConfig | None, on_gpu: bool,
                  stage_dtype: str = AUTO) -> torch.dtype:
    """`dtype_name` as a torch dtype."""
    import torch

    return getattr(torch, dtype_name(model_cfg, on_gpu, stage_dtype))


def training_dtype(model_cfg: ModelConfig | None, mixed_precision: str,
                   on_gpu: bool) -> torch.dtype:
    """The compute dtype of training and of the reference log-probs (they must agree).

    `training.mixed_precision` wins when set ('bf16', 'fp32'); 'auto' follows `model.dtype`, then
    bf16 on GPU and fp32 on CPU. float16 is refused at validation (no loss scaling here).
    """
    return resolve_dtype(model_cfg, on_gpu, _MIXED_PRECISION[mixed_precision])


def tokenizer_path(model_cfg: ModelConfig | None, model_dir: str | None,
                   storage: StorageConfig | None = None) -> str:
    """Where θ_t's tokenizer loads from: `model.tokenizer` when it names something other than
    `model.path` (resolved, so builtin:, s3:// and run-dir URIs work), else `model_dir`.

    `model.tokenizer == model.path` means "θ_t's own" (a committed θ_t carries a copy of it)
    unless no `model_dir` is given. Callers that need only the tokenizer pass None for
    `model_dir` when `model.tokenizer` is set, so θ_t's weights are not fetched for it.
    """
    source = model_cfg.tokenizer if model_cfg is not None else None
    if source and (source != model_cfg.path or model_dir is None):
        return resolve_model_path(source, storage)
    if model_dir is None:
        raise ValueError("no tokenizer to load: model.tokenizer is unset and no model dir was given")
    return model_dir


def trust_remote_code(model_cfg: ModelConfig | None) -> bool:
    return bool(model_cfg is not None and model_cfg.trust_remote_code)


def load_tokenizer(model_cfg: ModelConfig | None, model_dir: str | None,
                   storage: StorageConfig | None = None, padding_side: str | None = None):
    """θ_t's tokenizer as the config says (see the module docstring), with a pad token.

    A missing pad token becomes EOS (SmolLM2's pad already equals its EOS): padding is always
    masked by the attention mask, never recognised by its id. `model_cfg` None loads the
    tokenizer of `model_dir` as it is.
    """
    from transformers import AutoTokenizer

    kwargs = {"padding_side": padding_side} if padding_side else {}
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_path(model_cfg, model_dir, storage),
        trust_remote_code=trust_remote_code(model_cfg), **kwargs,
    )
    if model_cfg is not None and model_cfg.chat_template:
        tokenizer.chat_template = model_cfg.chat_template
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model_cfg: ModelConfig | None, model_dir: str, dtype: torch.dtype):
    """The causal LM in `model_dir` with `dtype` weights (see `resolve_dtype`), on the CPU."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, trust_remote_code=trust_remote_code(model_cfg)
    )
