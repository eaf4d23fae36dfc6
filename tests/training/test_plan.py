"""Global batch arithmetic, the partial last step, and deterministic sharding across workers."""

import pyarrow as pa
import pytest

from aipo_ray.storage import make_prompt_id
from aipo_ray.training.plan import BatchPlan, join_reference


def test_global_batch_is_micro_times_accum_times_workers():
    plan = BatchPlan(num_pairs=1000, global_batch_size=256, micro_batch_size=4, num_workers=8,
                     num_epochs=1, seed=0)
    assert plan.grad_accum == 8  # the paper's 256 on 8 GPUs with micro-batch 4
    assert plan.steps_per_epoch == 4 and plan.last_step_pairs == 1000 - 3 * 256
    assert "last step of each epoch has 232 pairs" in plan.describe()


def test_every_pair_is_trained_once_per_epoch_with_real_weights():
    plan = BatchPlan(num_pairs=11, global_batch_size=4, micro_batch_size=1, num_workers=3,
                     num_epochs=2, seed=7)
    assert plan.grad_accum == 2 and plan.total_steps == 6
    for epoch in range(2):
        seen = []
        for step in range(epoch * 3, epoch * 3 + 3):
            per_worker = [plan.worker_micro_batches(step, r) for r in range(3)]
            # Every worker runs the same number of micro-batches (FSDP2 collectives need it).
            assert {len(mbs) for mbs in per_worker} == {plan.grad_accum}
            real = [i for mbs in per_worker for mb in mbs for i, w in mb if w > 0]
            assert sorted(real) == sorted(plan.step_indices(step))
            seen += real
        assert sorted(seen) == list(range(11))
    assert [len(plan.step_indices(s)) for s in range(3)] == [4, 4, 3]


def test_padding_slots_weigh_zero_when_a_worker_has_no_pair():
    plan = BatchPlan(num_pairs=5, global_batch_size=4, micro_batch_size=1, num_workers=2,
                     num_epochs=1, seed=0)
    last = plan.worker_micro_batches(1, 1)  # step 2 holds one pair, dealt to rank 0
    assert [w for mb in last for _, w in mb] == [0.0, 0.0]
    assert [w for mb in plan.worker_micro_batches(1, 0) for _, w in mb] == [1.0, 0.0]


def test_order_is_seeded_and_changes_per_epoch():
    a = BatchPlan(50, 8, 2, 2, 3, seed=1)
    assert a.epoch_order(0) == BatchPlan(50, 8, 2, 2, 3, seed=1).epoch_order(0)
    assert a.epoch_order(0) != a.epoch_order(1)
    assert a.epoch_order(0) != BatchPlan(50, 8, 2, 2, 3, seed=2).epoch_order(0)


def _pairs(prompts):
    return pa.table({"prompt_id": [make_prompt_id(p) for p in prompts], "prompt": prompts,
                     "chosen": ["c"] * len(prompts), "rejected": ["r"] * len(prompts),
                     "chosen_score": [1.0] * len(prompts), "rejected_score": [0.0] * len(prompts)})


def test_reference_is_joined_on_prompt_id_in_pairs_order():
    pairs = _pairs(["a", "b", "c"])
    ids = pairs.column("prompt_id").to_pylist()
    ref = pa.table({"prompt_id": [ids[2], ids[0], ids[1]], "ref_chosen_logp": [-3.0, -1.0, -2.0],
                    "ref_rejected_logp": [-30.0, -10.0, -20.0], "chosen_len": [1, 1, 1],
                    "rejected_len": [1, 1, 1]})
    joined = join_reference(pairs, ref)
    assert joined.column("ref_chosen_logp").to_pylist() == [-1.0, -2.0, -3.0]
    assert joined.column("ref_rejected_logp").to_pylist() == [-10.0, -20.0, -30.0]
    with pytest.raises(ValueError, match=f"no row for prompt_id '{ids[2]}'"):
        join_reference(pairs, ref.slice(1))
