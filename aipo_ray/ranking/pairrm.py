"""PairRM (Jiang et al. 2023, llm-blender) on current transformers, with the llm-blender numbers.

    rm = PairRM.from_pretrained("llm-blender/PairRM", device="cpu")
    M = rm.compare_matrix(prompts, candidates)  # [B, N, N]; M[b, i, j] > 0: i beats j
    s = rm.scores(prompts, candidates)          # [B, N]; s_i = mean_j M[i, j] − M[j, i]
    t = rm.tournament(prompts, candidates)      # best_idx, worst_idx with O(N) comparisons

Every row equals llm-blender's `Blender.rank`/`compare` at batch size 1 (see pairrm_format for
why llm-blender itself differs at larger batch sizes); scores do not depend on how prompts are
batched here.
"""

from __future__ import annotations

import torch

from .pairrm_format import PairEncoder
from .pairrm_model import PairRMNetwork, load_pairrm
from .pairwise import TournamentResult, full_matrix, scores_from_matrix, tournament
from .registry import RankerContext, register_ranker


class PairRM:
    """A loaded PairRM: tokenization, batching by length, and the network on one device."""

    def __init__(
        self,
        network: PairRMNetwork,
        encoder: PairEncoder,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ):
        self.network = network.to(device).eval()
        self.encoder = encoder
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        backbone: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        batch_size: int = 16,
    ) -> PairRM:
        """Load llm-blender's layout (RankerConfig + pytorch_model.bin, backbone from its
        `model_name` or `backbone=`) or PairRM-hf's (DeBERTa config + model.safetensors).

        `path` is a local directory or a hub name (downloaded on first use). `dtype` defaults to
        float32; float16/bfloat16 halve memory on a GPU at a small cost in agreement.
        """
        loaded = load_pairrm(path, backbone=backbone)
        network = loaded.network.to(dtype or torch.float32)
        encoder = PairEncoder(
            loaded.tokenizer, loaded.prefix_ids,
            source_max_length=loaded.source_max_length,
            candidate_max_length=loaded.candidate_max_length,
        )
        return cls(network, encoder, device=device, batch_size=batch_size)

    @torch.no_grad()
    def compare_pairs(self, sources: list[str], lefts: list[str], rights: list[str]) -> torch.Tensor:
        """Logit per triple that `left` beats `right` (shown in that order), as float32 on CPU.

        Sequences are sorted by length before batching so that padding stays small; padding is
        masked, so the grouping does not change any row's value.
        """
        encoded = self.encoder.encode_pairs(sources, lefts, rights)
        out = torch.zeros(len(encoded), dtype=torch.float32)
        order = sorted(range(len(encoded)), key=lambda k: len(encoded[k][0]), reverse=True)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = self.encoder.collate([encoded[k] for k in chunk]).to(self.device)
            out[torch.tensor(chunk)] = self.network(batch).float().cpu()
        return out

    def compare_matrix(self, prompts: list[str], candidates: list[list[str]]) -> torch.Tensor:
        """[B, N, N]: M[b, i, j] is llm-blender's logit for (candidate i, candidate j); 0 on the diagonal."""
        return full_matrix(self.compare_pairs, prompts, candidates)

    def scores(self, prompts: list[str], candidates: list[list[str]]) -> torch.Tensor:
        """[B, N]: s_i = mean over all j of M[i, j] − M[j, i] (llm-blender's `rank` scores)."""
        return scores_from_matrix(self.compare_matrix(prompts, candidates))

    def compare(self, prompts: list[str], candidates_a: list[str], candidates_b: list[str]) -> torch.Tensor:
        """[B]: llm-blender's `compare` logits in "[A,B]+[B,A]" mode, M[A, B] − M[B, A]."""
        return self.compare_pairs(prompts, candidates_a, candidates_b) - self.compare_pairs(
            prompts, candidates_b, candidates_a
        )

    def tournament(self, prompts: list[str], candidates: list[list[str]]) -> TournamentResult:
        """Best and worst of each prompt's candidates with about 3N/2 two-order comparisons."""
        return tournament(self.compare_pairs, prompts, candidates)


@register_ranker("pairrm")
def build_pairrm(cfg, ctx: RankerContext):
    """PairRM from `ranking.model` (and `ranking.backbone`), float16 on a GPU as llm-blender."""
    from .base import PairwiseRanker

    rm = PairRM.from_pretrained(cfg.model, backbone=cfg.backbone, device=ctx.device,
                                dtype=ctx.dtype(cfg, torch.float16), batch_size=cfg.pair_batch_size)
    return PairwiseRanker(rm.compare_pairs, cfg.mode)
