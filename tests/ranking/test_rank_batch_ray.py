"""RankBatch as Ray Data actors on a local cluster, with the tiny PairRM."""

import numpy as np
import pyarrow as pa
import pytest

from aipo_ray.config import RankingConfig
from aipo_ray.ranking import RankBatch, rank_pool
from aipo_ray.storage.schemas import RANKINGS_OUT

ROWS = [
    {"prompt_id": "p0", "prompt": "what is one plus two?", "candidates": ["three", "four", "one two"]},
    {"prompt_id": "p1", "prompt": "write about the sea", "candidates": ["sea sky", "", "the sea is blue"]},
    {"prompt_id": "p2", "prompt": "say yes", "candidates": ["yes", "no"]},  # a different N
    {"prompt_id": "p3", "prompt": "say nothing", "candidates": []},
    {"prompt_id": "p4", "prompt": "sort five two", "candidates": ["two five", "five two", "two"]},
]


@pytest.fixture(scope="module")
def cfg(tiny_pairrm) -> RankingConfig:
    return RankingConfig(backend="pairrm", model=tiny_pairrm["llm-blender"], batch_size=2, pair_batch_size=4)


def expected(pairrm, row):
    if not row["candidates"]:
        return [], -1, -1
    scores = pairrm.scores([row["prompt"]], [row["candidates"]])[0].numpy()
    return list(scores), int(np.argmax(scores)), len(scores) - 1 - int(np.argmin(scores[::-1]))


def test_rank_batch_in_process_groups_prompts_by_candidate_count(cfg, pairrm):
    table = RankBatch(cfg)(pa.Table.from_pylist(ROWS))
    assert table.schema == RANKINGS_OUT
    assert table.column("rejection").null_count == len(ROWS)  # PairRM refuses nothing
    assert table.column("prompt_id").to_pylist() == [r["prompt_id"] for r in ROWS]
    for out, row in zip(table.to_pylist(), ROWS, strict=True):
        scores, best, worst = expected(pairrm, row)
        np.testing.assert_allclose(out["scores"], scores, atol=1e-5)
        assert (out["best_idx"], out["worst_idx"]) == (best, worst)


def test_rank_batch_on_a_local_ray_cluster(ray_cluster, cfg, pairrm):
    import ray

    ds = ray.data.from_items(ROWS).repartition(2)
    out = rank_pool(ds, cfg).take_all()
    assert sorted(r["prompt_id"] for r in out) == [r["prompt_id"] for r in ROWS]
    by_id = {r["prompt_id"]: r for r in out}
    for row in ROWS:
        scores, best, worst = expected(pairrm, row)
        got = by_id[row["prompt_id"]]
        np.testing.assert_allclose(list(got["scores"]), scores, atol=1e-5)
        assert (got["best_idx"], got["worst_idx"]) == (best, worst)


def test_rank_batch_accepts_numpy_dict_batches_and_names_missing_columns(cfg):
    ranker = RankBatch(cfg.model_dump())
    batch = {
        "prompt_id": np.array(["a"]), "prompt": np.array(["say yes"]),
        "candidates": np.array([np.array(["yes", "no"], dtype=object)], dtype=object),
    }
    assert ranker(batch).num_rows == 1
    with pytest.raises(KeyError, match="lacks column"):
        ranker({"prompt_id": np.array(["a"]), "prompt": np.array(["x"])})
