"""PairRM's network and its two checkpoint layouts, loaded without llm-blender.

The network is llm-blender's `CrossCompareReranker` for DeBERTa (also `DebertaV2PairRM` of the
`llm-blender/PairRM-hf` repo): a DeBERTa-v3 encoder reads one comparison sequence; the last-layer
states of the `<|source|>` token and of a candidate's prefix token are concatenated and a
two-layer tanh head maps them to one score per task. The comparison logit is
mean over tasks of head(source, candidate1) − head(source, candidate2): > 0 means candidate 1
is better. Both layouts store the encoder as `pretrained_model.*` and the head as `head_layer.*`.

Layouts:
- llm-blender (`llm-blender/PairRM`): `config.json` is a RankerConfig (`ranker_type`,
  `model_name` of the DeBERTa backbone, `source_maxlength`, `candidate_maxlength`, `n_tasks`,
  `drop_out`) and the weights are `pytorch_model.bin`. The backbone (a hub name or a directory
  with `config.json` and `spm.model`) supplies the encoder config and the tokenizer, to which the
  four prefixes are added as llm-blender adds them.
- PairRM-hf (`llm-blender/PairRM-hf`): `config.json` is a DeBERTa-v2 config plus the prefix token
  ids, `n_tasks` and `drop_out`; the weights are `model.safetensors`; the tokenizer ships alongside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .pairrm_format import PREFIX_TOKENS, PairBatch, PrefixIds

DEFAULT_BACKBONE = "microsoft/deberta-v3-large"
_TOKENIZER_FILES = ("spm.model", "tokenizer.json", "tokenizer_config.json")


class PairRMNetwork(nn.Module):
    """DeBERTa-v2/v3 encoder + llm-blender's pairwise head (parameter names as in both layouts)."""

    def __init__(self, config, n_tasks: int = 1, drop_out: float = 0.05):
        from transformers import DebertaV2Model

        super().__init__()
        self.pretrained_model = DebertaV2Model(config)
        hidden = config.hidden_size
        self.head_layer = nn.Sequential(
            nn.Dropout(drop_out),
            nn.Linear(2 * hidden, hidden),
            nn.Tanh(),
            nn.Dropout(drop_out),
            nn.Linear(hidden, n_tasks),
        )

    def forward(self, batch: PairBatch) -> torch.Tensor:
        """Logit per comparison [K]: > 0 means candidate 1 is better than candidate 2."""
        states = self.pretrained_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state
        rows = torch.arange(states.shape[0], device=states.device)
        source = states[rows, batch.source_pos]
        left = self.head_layer(torch.cat([source, states[rows, batch.cand1_pos]], dim=-1))
        right = self.head_layer(torch.cat([source, states[rows, batch.cand2_pos]], dim=-1))
        return (left - right).mean(dim=-1)


@dataclass
class LoadedPairRM:
    network: PairRMNetwork
    tokenizer: object
    prefix_ids: PrefixIds
    source_max_length: int = 1224
    candidate_max_length: int = 412


def local_dir(path: str) -> Path:
    """A local directory as is; a hub name downloaded (on a user's machine; tests stay offline)."""
    expanded = Path(path).expanduser()
    if expanded.is_dir():
        return expanded
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path))


def load_pairrm(path: str, backbone: str | None = None) -> LoadedPairRM:
    """Read either layout (told apart by its config.json) into a network in eval mode."""
    root = local_dir(path)
    config_file = root / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{root}: no config.json; expected a PairRM checkpoint directory")
    raw = json.loads(config_file.read_text())
    if "ranker_type" in raw:
        return _load_blender_layout(root, raw, backbone)
    if "source_prefix_id" in raw:
        return _load_hf_layout(root, backbone)
    raise ValueError(
        f"{config_file}: neither llm-blender's RankerConfig (ranker_type, model_name) nor a "
        "PairRM-hf config (source_prefix_id, ...); cannot tell which PairRM layout this is"
    )


def _load_blender_layout(root: Path, raw: dict, backbone: str | None) -> LoadedPairRM:
    from transformers import AutoConfig, AutoTokenizer

    if raw["ranker_type"] != "pairranker":
        raise ValueError(f"{root}/config.json: ranker_type {raw['ranker_type']!r}, expected 'pairranker'")
    backbone = backbone or raw.get("model_name") or DEFAULT_BACKBONE
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    tokenizer.add_tokens(list(PREFIX_TOKENS))
    ids = PrefixIds(*tokenizer.convert_tokens_to_ids(list(PREFIX_TOKENS)))
    config = AutoConfig.from_pretrained(backbone)
    network = _build_network(config, _read_state(root), raw.get("n_tasks", 1), raw.get("drop_out", 0.05))
    return LoadedPairRM(
        network, tokenizer, ids,
        source_max_length=raw.get("source_maxlength") or 1224,
        candidate_max_length=raw.get("candidate_maxlength") or 412,
    )


def _load_hf_layout(root: Path, backbone: str | None) -> LoadedPairRM:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(root)
    has_tokenizer = any((root / name).exists() for name in _TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(backbone or (root if has_tokenizer else DEFAULT_BACKBONE))
    tokenizer.add_tokens([t for t in PREFIX_TOKENS if t not in tokenizer.get_vocab()])
    ids = PrefixIds(*tokenizer.convert_tokens_to_ids(list(PREFIX_TOKENS)))
    for name, found in ids.__dict__.items():
        expected = getattr(config, name, found)
        if expected != found:
            raise ValueError(
                f"{root}: the tokenizer gives {name} = {found}, the config says {expected}; "
                "pass the tokenizer the checkpoint was trained with as backbone="
            )
    network = _build_network(
        config, _read_state(root), getattr(config, "n_tasks", 1), getattr(config, "drop_out", 0.05)
    )
    return LoadedPairRM(
        network, tokenizer, ids,
        source_max_length=getattr(config, "source_maxlength", 1224),
        candidate_max_length=getattr(config, "candidate_maxlength", 412),
    )


def _read_state(root: Path) -> dict[str, torch.Tensor]:
    if (root / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(root / "model.safetensors"))
    elif (root / "pytorch_model.bin").exists():
        state = torch.load(root / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{root}: neither model.safetensors nor pytorch_model.bin")
    # Checkpoints written by old transformers name LayerNorm parameters gamma/beta.
    renamed = {}
    for key, value in state.items():
        if key.endswith(".gamma"):
            key = key[: -len(".gamma")] + ".weight"
        elif key.endswith(".beta"):
            key = key[: -len(".beta")] + ".bias"
        renamed[key] = value
    return renamed


def _build_network(config, state: dict, n_tasks: int, drop_out: float) -> PairRMNetwork:
    embedding = state.get("pretrained_model.embeddings.word_embeddings.weight")
    if embedding is None:
        raise KeyError("checkpoint has no pretrained_model.embeddings.word_embeddings.weight")
    # llm-blender resizes the backbone's embeddings to its tokenizer (prefixes included).
    config.vocab_size = embedding.shape[0]
    with _skip_random_init():  # every parameter is overwritten below; 435M random draws are not free
        network = PairRMNetwork(config, n_tasks=n_tasks, drop_out=drop_out)
    result = network.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise KeyError(f"PairRM checkpoint lacks parameters: {result.missing_keys[:8]}")
    # Buffers that old transformers saved (position ids) are harmless; anything else is not.
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if unexpected:
        raise KeyError(f"PairRM checkpoint has parameters this network does not: {unexpected[:8]}")
    return network.eval()


def _skip_random_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()
