"""The prompt pool X^pool of iteration i: the seed sources plus the prompts of iterations 1..i-1.

Algorithm 1 grows the pool as it goes; self-instruct samples its few-shot examples from it and the
filters refuse instructions too close to anything in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from aipo_ray.config import PromptsConfig
from aipo_ray.storage import RunDir
from aipo_ray.storage.schemas import PROMPTS

from .self_instruct import SOURCE
from .sources import LoadedPrompts, load_prompts


@dataclass
class PromptPool:
    seeds: LoadedPrompts
    earlier: pa.Table  # prompts tables of iterations 1..i-1, concatenated

    @property
    def seed_texts(self) -> list[str]:
        return self.seeds.table.column("prompt").to_pylist()

    @property
    def generated_texts(self) -> list[str]:
        """Instructions self-instruct made in earlier iterations (not seeds copied forward)."""
        rows = self.earlier.to_pylist()
        return [r["prompt"] for r in rows if r["source"] == SOURCE]

    @property
    def texts(self) -> list[str]:
        """Every distinct prompt of the pool, seeds first."""
        seen: set[str] = set()
        out = []
        for table in (self.seeds.table, self.earlier):
            for pid, text in zip(table.column("prompt_id").to_pylist(),
                                 table.column("prompt").to_pylist(), strict=True):
                if pid not in seen:
                    seen.add(pid)
                    out.append(text)
        return out


def load_pool(cfg: PromptsConfig, run_dir: RunDir, iteration: int,
              this_iteration: pa.Table | None = None) -> PromptPool:
    """Seeds (with their rejected rows) and every earlier iteration's finished prompts table,
    plus `this_iteration`: prompts the earlier sampling rounds of this iteration took."""
    seeds = load_prompts(cfg, run_dir.storage)
    earlier = [run_dir.read_stage_table(j, "prompts").select(PROMPTS.names)
               for j in range(1, iteration)]
    if this_iteration is not None:
        earlier.append(this_iteration.select(PROMPTS.names))
    table = pa.concat_tables(earlier) if earlier else PROMPTS.empty_table()
    return PromptPool(seeds, table)
