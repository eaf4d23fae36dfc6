"""Reference log-probs of each pair under θ_t, once per iteration, in Ray Data actors.

The actors tokenise and gather log-probs with the trainer's own code (`PairEncoder`,
`SequenceLogps`), so the reference term of a pair covers exactly the tokens the policy term does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from aipo_ray.config import RunConfig
from aipo_ray.storage.schemas import PAIRS, REF_LOGPS, conform


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


def compute_ref_logps(config: RunConfig, pairs: pa.Table, model_uri: str) -> pa.Table:
    """The `ref_logps` table of `pairs` under the model at `model_uri` (one row per pair)."""
    import ray

    from aipo_ray.runtime import init_ray

    init_ray(config.ray)
    pairs = conform(pairs, PAIRS, "pairs").select(["prompt_id", "prompt", "chosen", "rejected"])
    ref = config.reference
    resources = {"num_cpus": ref.cpus_per_replica}
    if ref.gpus_per_replica:
        resources["num_gpus"] = ref.gpus_per_replica
    ds = ray.data.from_arrow(pairs).map_batches(
        ReferenceScorer,
        fn_constructor_kwargs={"config": config, "model_uri": model_uri,
                               "micro_batch_size": ref.batch_size},
        batch_size=ref.batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=ref.num_replicas),
        **resources,
    )
    blocks = [b for b in ray.get(ds.to_arrow_refs()) if b.num_rows]
    table = pa.concat_tables(blocks) if blocks else REF_LOGPS.empty_table()
    return conform(table, REF_LOGPS, "ref_logps").select(REF_LOGPS.names)
