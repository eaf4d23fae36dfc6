"""`aipo plan`: per stage, what it asks, where one member fits, the shared feasibility verdict."""

from __future__ import annotations

import pytest

from aipo_ray.cli import main
from aipo_ray.config import load_config
from aipo_ray.resource_plan import format_plan, infeasible, iteration_gpu_hours, plan
from aipo_ray.resources import FITS, INFEASIBLE

# The three-node test cluster of tests/fixtures/multinode.py, as resource dicts.
THREE_NODES = [{"CPU": 1.0, "head": 1.0}, {"CPU": 2.0, "node_a": 1.0},
               {"CPU": 2.0, "node_b": 1.0}]


def test_each_stage_of_the_cluster_config_fits_one_member_per_worker_node():
    config = load_config("tests/cluster/three_nodes.yaml", ["model.path=unused"])
    plans = plan(config, THREE_NODES)
    assert [p.stage for p in plans] == ["generations", "rankings", "ref_logps", "train"]
    for p in plans:
        assert [c.status for c in p.checks] == [FITS]
        assert p.hosts == [[1, 2]]  # 1.5-1.7 CPUs: never on the 1-CPU head
    assert not infeasible(plans)
    text = format_plan(plans, THREE_NODES, None)
    assert "train:\n  fits       training.num_workers: 2 × training worker (1.5 CPU each)" in text


def test_an_ask_no_node_meets_is_infeasible_and_names_its_key():
    config = load_config("tests/cluster/three_nodes.yaml",
                         ["model.path=unused", "training.cpus_per_worker=3"])
    (train,) = [p for p in plan(config, THREE_NODES) if p.stage == "train"]
    assert train.checks[0].status == INFEASIBLE and train.hosts == [[]]
    assert "training.cpus_per_worker" in train.checks[0].problem


def test_gpu_hours_come_from_the_scaling_model_for_the_training_gpus():
    config = load_config("pipelines/configs/mistral_nemo_8xh100.yaml")
    hours = iteration_gpu_hours(config)
    assert hours["gpus"] == 8
    assert hours["gpu_hours"] == pytest.approx(8 * hours["wall_hours"])
    assert iteration_gpu_hours(load_config("pipelines/configs/tiny_cpu.yaml")) is None


def test_aipo_plan_exits_2_when_this_machine_cannot_hold_an_ask(capsys):
    rc = main(["plan", "tests/cluster/three_nodes.yaml", "model.path=unused", "ray.num_cpus=1"])
    out = capsys.readouterr().out
    assert rc == 2
    assert "infeasible generation.num_replicas: 2 × generation replica (1.5 CPU each)" in out
    # Two members of 1.5-1.7 CPUs, placed together: 2 CPUs hold one, 4 hold both.
    assert main(["plan", "tests/cluster/three_nodes.yaml", "model.path=unused",
                 "ray.num_cpus=2"]) == 2
    assert main(["plan", "tests/cluster/three_nodes.yaml", "model.path=unused",
                 "ray.num_cpus=4"]) == 0
