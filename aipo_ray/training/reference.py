"""Reference log-probs of each pair under θ_t, once per iteration, in Ray Data actors.

The actors tokenise and gather log-probs with the trainer's own code (`PairEncoder`,
`SequenceLogps`), so the reference term of a pair covers exactly the tokens the policy term does.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from aipo_ray.actor_pool import PoolSpec, collect, map_pool
from aipo_ray.config import RunConfig
from aipo_ray.storage.schemas import PAIRS, REF_LOGPS, conform

if TYPE_CHECKING:
    import ray.data


# Fault-injection hook (tests/reliability/test_hangs.py): a batch holding this prompt id hangs,
# as a stuck kernel would, so the deadline must catch it. Unset in every real run.
HANG_ENV = "AIPO_TEST_HANG_REFERENCE"


class ReferenceScorer:
    """Ray Data callable class: pairs batch → prompt_id, ref_{chosen,rejected}_logp, lengths.

    The model URI is resolved inside the actor (a committed s3:// checkpoint is downloaded and
    verified on the actor's node).
    """

    def __init__(self, config: RunConfig, model_uri: str, micro_batch_size: int | None = None):
        import torch

        from .logps import SequenceLogps
        from .model_io import compute_dtype, load_policy, make_encoder

        self.torch = torch
        on_gpu = torch.cuda.is_available() and config.reference.gpus_per_replica > 0
        self.device = torch.device("cuda" if on_gpu else "cpu")
        _, tokenizer, model = load_policy(config, model_uri, compute_dtype(config, on_gpu))
        self.encoder = make_encoder(config, tokenizer)
        self.scorer = SequenceLogps(model.to(self.device).eval(), config.training.logps_chunk_size)
        self.micro = micro_batch_size or config.training.micro_batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from .batching import collate_pairs

        if os.environ.get(HANG_ENV) in {str(p) for p in batch["prompt_id"]}:
            time.sleep(3600)

        pairs = self.encoder.encode_many(batch["prompt"], batch["chosen"], batch["rejected"])
        columns: dict[str, list] = {k: [] for k in REF_LOGPS.names if k != "prompt_id"}
        with self.torch.inference_mode():
            for start in range(0, len(pairs), self.micro):
                chunk = collate_pairs(pairs[start:start + self.micro], self.encoder.pad_token_id)
                chosen, rejected, chosen_len, rejected_len = self.scorer.pair_logps(
                    chunk.to(self.device))
                columns["ref_chosen_logp"] += chosen.double().cpu().tolist()
                columns["ref_rejected_logp"] += rejected.double().cpu().tolist()
                columns["chosen_len"] += chosen_len.cpu().tolist()
                columns["rejected_len"] += rejected_len.cpu().tolist()
        return {"prompt_id": batch["prompt_id"], **{k: np.asarray(v) for k, v in columns.items()}}


def reference_pool(config: RunConfig, ds: ray.data.Dataset, model_uri: str) -> ray.data.Dataset:
    """`ds` (pairs) scored under the model at `model_uri` by `reference.num_replicas` actors, each
    batch under `reference.timeout_s` / `max_retries` (aipo_ray.actor_pool); lazily."""
    ref = config.reference
    # No select_columns here: it runs as a Ray Data task of its own, which waits forever for a
    # CPU when the scorer actors hold every CPU of the cluster (tiny_cpu.yaml: 2 of 2). The
    # scorer reads only the columns it needs.
    return map_pool(ds, ReferenceScorer, PoolSpec.of("reference", ref, batch_format="numpy"),
                    REF_LOGPS, config=config, model_uri=model_uri,
                    micro_batch_size=ref.batch_size)


def compute_ref_logps(config: RunConfig, pairs: pa.Table, model_uri: str) -> pa.Table:
    """The `ref_logps` table of `pairs` under the model at `model_uri` (one row per pair), on
    the caller: for small tables (tests, notebooks); the stage writes shards instead."""
    import ray

    ds = ray.data.from_arrow(conform(pairs, PAIRS, "pairs"))
    return collect(reference_pool(config, ds, model_uri), REF_LOGPS)
