"""The actor-pool helper on a local Ray: Arrow output in the contract's types, and the progress
watchdog that stops an execution whose output stops coming."""

import time

import pyarrow as pa
import pytest

from aipo_ray.actor_pool import PoolSpec, Stall, StalledError, collect, map_pool, output_refs

SCHEMA = pa.schema([("prompt_id", pa.string()), ("n", pa.int32())])


class Count:
    """A pool's callable class returning a dict of columns (the helper makes it Arrow)."""

    def __init__(self, offset: int):
        self.offset = offset

    def __call__(self, batch):
        return {"prompt_id": batch["prompt_id"], "n": [len(p) + self.offset
                                                       for p in batch["prompt_id"]]}


def stall_on(batch, prompt_id: str):
    if prompt_id in set(batch["prompt_id"]):
        time.sleep(120)
    return batch


def test_map_pool_returns_the_contract_types(ray_cluster):
    import ray

    ds = ray.data.from_arrow(pa.table({"prompt_id": ["a", "bb", "ccc"]}))
    spec = PoolSpec(what="count", size=1, batch_size=2, num_cpus=0.5, batch_format="numpy",
                    timeout_s=30)
    table = collect(map_pool(ds, Count, spec, SCHEMA, offset=10), SCHEMA)
    assert table.schema == SCHEMA
    assert sorted(zip(table["prompt_id"].to_pylist(), table["n"].to_pylist(), strict=True)) == [
        ("a", 11), ("bb", 12), ("ccc", 13)]


def test_output_that_stops_coming_fails_naming_the_prompts_not_done(ray_cluster):
    import ray

    ids = [f"p{i}" for i in range(4)]
    ds = ray.data.from_items([{"prompt_id": p} for p in ids], override_num_blocks=4).map_batches(
        stall_on, fn_kwargs={"prompt_id": "p3"}, batch_size=1, num_cpus=0.5)
    started = time.monotonic()
    with pytest.raises(StalledError, match=r"generation: no progress for timeout_s=10 \(after "
                                           r"its last output") as info:
        output_refs(ds, Stall(timeout_s=10, startup_s=60, what="generation"), ids)
    assert time.monotonic() - started < 100
    # p3 is named; the others finish in time unless the machine is very busy.
    assert "prompts not yet done: " in str(info.value) and "p3 (raise" in str(info.value)
