"""Tiny random PairRM checkpoints, built offline, for tests and smoke runs of the ranking stage.

`build_tiny_pairrm(dir)` writes, from one set of random weights:

    dir/backbone/    DeBERTa-v2 config + spm.model (a sentencepiece model trained here on
                     synthetic text) + random encoder weights: what `model_name` points at
    dir/pairrm/      llm-blender's layout: RankerConfig config.json + pytorch_model.bin
    dir/pairrm-hf/   PairRM-hf's layout: DeBERTa config with prefix ids + model.safetensors +
                     tokenizer

The numbers are meaningless; the format, shapes and code paths are PairRM's.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import torch

from .pairrm_format import PREFIX_TOKENS
from .pairrm_model import PairRMNetwork

_WORDS = [
    "the", "a", "an", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "answer",
    "question", "good", "bad", "better", "worse", "response", "python", "code", "list", "sort",
    "explain", "why", "how", "what", "is", "are", "be", "one", "two", "three", "four", "five",
    "hello", "world", "please", "write", "short", "poem", "about", "sea", "sky", "river",
    "mountain", "because", "therefore", "first", "second", "finally", "step", "number", "sum",
    "result", "true", "false", "yes", "no", "maybe", "here", "there",
]


def synthetic_lines(n: int = 400, seed: int = 0) -> list[str]:
    """Deterministic word salad: enough text to train a small sentencepiece model."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 15))) + rng.choice(".?!,")
        for _ in range(n)
    ]


def build_tiny_backbone(target: str | Path, seed: int = 0) -> str:
    """A DeBERTa-v3-shaped backbone directory: config.json, spm.model and random weights."""
    import sentencepiece as spm
    from transformers import AutoTokenizer, DebertaV2Model

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    # DeBERTa-v3's spm ids: [PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(synthetic_lines(seed=seed)), model_writer=model,
        vocab_size=200, hard_vocab_limit=False, model_type="unigram", character_coverage=1.0,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]", minloglevel=2,
    )
    (target / "spm.model").write_bytes(model.getvalue())
    config = tiny_deberta_config()
    config.save_pretrained(target)
    # Like deberta-v3-large (128100 rows for 128001 tokens), the backbone has spare rows that
    # llm-blender's resize to the tokenizer drops.
    config.vocab_size = len(AutoTokenizer.from_pretrained(target)) + 23
    torch.manual_seed(seed)
    DebertaV2Model(config).save_pretrained(target)
    return str(target)


def tiny_deberta_config():
    """DeBERTa-v3's architecture flags at toy width; initializer_range is large so that random
    weights give comparison logits of order one, not 1e-3."""
    from transformers import DebertaV2Config

    return DebertaV2Config(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512, relative_attention=True,
        position_buckets=32, norm_rel_ebd="layer_norm", share_att_key=True,
        pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
        max_relative_positions=-1, layer_norm_eps=1e-7, initializer_range=0.3,
        pad_token_id=0,
    )


def build_tiny_pairrm(target: str | Path, seed: int = 0, **limits: int) -> dict[str, str]:
    """Both PairRM layouts of one random network; returns their paths and the backbone's.

    `limits` may set source_maxlength / candidate_maxlength (default 1224 / 412, PairRM's).
    """
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    target = Path(target)
    backbone = build_tiny_backbone(target / "backbone", seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    tokenizer.add_tokens(list(PREFIX_TOKENS))
    ids = dict(zip(("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id", "cand_prefix_id"),
                   tokenizer.convert_tokens_to_ids(list(PREFIX_TOKENS)), strict=True))
    config = AutoConfig.from_pretrained(backbone)
    config.vocab_size = len(tokenizer)
    torch.manual_seed(seed + 1)
    network = PairRMNetwork(config)
    state = {k: v.contiguous() for k, v in network.state_dict().items()}

    blender = target / "pairrm"
    blender.mkdir(parents=True, exist_ok=True)
    ranker_config = {
        "ranker_type": "pairranker", "model_type": "deberta", "model_name": backbone,
        "cache_dir": None, "load_checkpoint": None,
        "source_maxlength": limits.get("source_maxlength", 1224),
        "candidate_maxlength": limits.get("candidate_maxlength", 412),
        "n_tasks": 1, "num_pos": 5, "num_neg": 5, "sub_sampling_mode": "all_pair",
        "sub_sampling_ratio": 0.4, "loss_type": "instructgpt", "reduce_type": "linear",
        "inference_mode": "bubble", "drop_out": 0.05, "fp16": False, "device": None,
    }
    (blender / "config.json").write_text(json.dumps(ranker_config, indent=2))
    torch.save(state, blender / "pytorch_model.bin")

    hf = target / "pairrm-hf"
    hf.mkdir(parents=True, exist_ok=True)
    hf_config = config.to_dict() | ids | {
        "architectures": ["DebertaV2PairRM"], "n_tasks": 1, "drop_out": 0.05, "sep_token_id": 2,
    }
    if limits:
        hf_config |= {k: ranker_config[k] for k in ("source_maxlength", "candidate_maxlength")}
    (hf / "config.json").write_text(json.dumps(hf_config, indent=2))
    save_file(state, str(hf / "model.safetensors"))
    tokenizer.save_pretrained(hf)
    return {"backbone": backbone, "llm-blender": str(blender), "hf": str(hf)}
