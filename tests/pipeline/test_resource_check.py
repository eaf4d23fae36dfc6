"""Asks no node can meet fail within seconds, naming the config key, instead of waiting forever."""

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aipo_ray.config import load_config
from aipo_ray.resources import (
    FITS,
    INFEASIBLE,
    WAITS,
    InfeasibleResourceError,
    ResourceAsk,
    asks_for_config,
    autoscaling_node_types,
    check_asks,
    check_cluster,
    copies_that_fit,
    generation_asks,
    launchable_node_types,
    runs_that_fit,
    training_asks,
)
from tests.e2e.processes import REPO, child_env, free_port, kill_group

GIB = 1024**3


def node(cpu=2.0, gpu=0.0, memory=9.1 * GIB, alive=True, **custom):
    """One entry of `ray.nodes()`, as Ray reports it (memory in bytes, node:<ip> markers)."""
    resources = {"CPU": cpu, "memory": memory, "object_store_memory": 0.5 * GIB,
                 "node:127.0.0.1": 1.0, **custom}
    if gpu:
        resources["GPU"] = gpu
    return {"NodeID": "n", "Alive": alive, "Resources": resources}


def ask(key="generation.cpus_per_replica", count=1, gang=False, what="a generation replica",
        **bundle):
    return ResourceAsk(key=key, bundle=bundle, count=count, gang=gang, what=what)


def infeasible_message(asks, nodes) -> str:
    with pytest.raises(InfeasibleResourceError) as info:
        check_asks(asks, nodes)
    return str(info.value)


def config(tmp_path, *overrides):
    return load_config(None, [
        "model.path=builtin:smollm2-135m-instruct", f"run_dir={tmp_path / 'run'}",
        "iterations=1", "ray.num_cpus=2", *overrides,
    ])


# --- check_asks: a pure function of asks and nodes ----------------------------------------------


def test_copies_of_an_ask_count_whole_groups_over_every_node():
    group = ask(key="training.gpus_per_worker", count=8, gang=True, GPU=1, CPU=1)
    assert copies_that_fit(group, [node(cpu=16, gpu=8), node(cpu=16, gpu=8)]) == 2
    assert copies_that_fit(group, [node(cpu=16, gpu=8), node(cpu=16, gpu=4)]) == 1  # 12 GPUs
    assert copies_that_fit(ask(CPU=0), [node()]) == float("inf")


def test_runs_that_fit_side_by_side_is_set_by_the_most_demanding_ask(tmp_path):
    tiny = config(tmp_path, "ranking.cpus_per_replica=2")
    assert runs_that_fit([tiny, tiny], [node(cpu=2)]) == 1  # ranking takes both cores
    assert runs_that_fit([tiny, tiny], [node(cpu=2), node(cpu=2), node(cpu=4)]) == 4
    light = config(tmp_path, "ranking.cpus_per_replica=1", "training.cpus_per_worker=1",
                   "reference.cpus_per_replica=1")
    assert runs_that_fit([light], [node(cpu=2)]) == 2
    assert runs_that_fit([light], [node(cpu=0.5)]) == 1  # never below one: the check fails later


def test_a_cpu_ask_larger_than_every_node_names_the_key_and_the_largest_node():
    message = infeasible_message([ask(CPU=4)], [node(cpu=2), node(cpu=1, alive=False)])
    assert "generation.cpus_per_replica asks 4 CPU per generation replica" in message
    assert "1 node, largest node: 2 CPU, 0 GPU, 9.1 GiB memory" in message


def test_a_gpu_ask_on_a_cluster_without_gpus_is_infeasible():
    gpu_ask = ResourceAsk(key="generation.gpus_per_replica", bundle={"CPU": 1, "GPU": 1},
                          what="a generation replica",
                          resource_keys={"CPU": "generation.cpus_per_replica",
                                         "GPU": "generation.gpus_per_replica"})
    message = infeasible_message([gpu_ask], [node(cpu=8), node(cpu=4)])
    # Only the resource that no node has is blamed, not the CPU that fits.
    assert "generation.gpus_per_replica asks 1 CPU, 1 GPU per generation replica" in message
    assert "generation.cpus_per_replica" not in message
    assert "largest node: 8 CPU, 0 GPU" in message


def test_a_worker_group_that_no_set_of_nodes_holds_is_infeasible_though_each_worker_fits():
    workers = ResourceAsk(key="training.cpus_per_worker", bundle={"CPU": 3}, count=3, gang=True,
                          what="a training worker", count_key="training.num_workers")
    # Two 4-CPU nodes: one worker each (3 + 3 > 4), so 3 workers never start together.
    message = infeasible_message([workers], [node(cpu=4), node(cpu=4)])
    assert "training.num_workers asks 3 × training worker (3 CPU each), placed together" in message
    assert "the nodes hold at most 2" in message
    assert "2 nodes, largest node: 4 CPU" in message


def test_a_worker_group_spread_over_several_nodes_fits():
    workers = ask(key="training.gpus_per_worker", count=8, gang=True, CPU=1, GPU=1)
    checks = check_asks([workers], [node(cpu=16, gpu=4), node(cpu=16, gpu=4)])
    assert [c.status for c in checks] == [FITS]


def test_one_member_of_a_pool_that_is_no_gang_is_enough():
    engines = ask(count=4, gang=False, CPU=2)
    assert [c.status for c in check_asks([engines], [node(cpu=2)])] == [FITS]


def test_memory_is_compared_in_bytes_and_printed_in_gib():
    big = ask(key="reference.memory", what="a reference replica", CPU=1, memory=16 * GIB)
    message = infeasible_message([big], [node(cpu=4, memory=8 * GIB)])
    assert "reference.memory asks 1 CPU, 16.0 GiB memory per reference replica" in message
    assert "largest node: 4 CPU, 0 GPU, 8.0 GiB memory" in message
    assert check_asks([big], [node(memory=32 * GIB)])[0].status == FITS


def test_a_custom_resource_missing_from_every_node_is_named_with_the_largest_node():
    tpu = ask(key="generation.resources", CPU=1, TPU=4)
    message = infeasible_message([tpu], [node(cpu=4, TPU=2)])
    assert "asks 1 CPU, 4 TPU per generation replica" in message
    assert "largest node: 4 CPU, 0 GPU, 9.1 GiB memory, 2 TPU" in message
    assert check_asks([tpu], [node(cpu=4, TPU=4)])[0].status == FITS


def test_fractional_asks_pack_exactly():
    quarter = ask(count=8, gang=True, CPU=0.25)
    assert check_asks([quarter], [node(cpu=2)])[0].status == FITS
    assert "at most 8" in infeasible_message([ask(count=9, gang=True, CPU=0.25)], [node(cpu=2)])


def test_an_autoscaling_cluster_waits_and_logs_what_for(caplog):
    with caplog.at_level("WARNING", logger="aipo_ray.resources"):
        checks = check_asks([ask(CPU=64)], [node(cpu=2)], autoscaling=["cpu-worker"])
    assert [c.status for c in checks] == [WAITS]
    assert "generation.cpus_per_replica asks 64 CPU" in caplog.text
    assert "waits for the autoscaler" in caplog.text and "cpu-worker" in caplog.text


def test_a_read_only_autoscaler_that_mirrors_the_nodes_cannot_grow():
    node_id = "cfd2ddc4a8a2"
    # What `ray start --head` without an autoscaling config reports (captured from Ray 2.60).
    readonly = {"active_nodes": {f"node_{node_id}": 1}, "pending_launches": {},
                "node_type_mapping": {node_id: f"node_{node_id}"}, "legacy": True}
    assert launchable_node_types(readonly) == []
    launcher = {"active_nodes": {"ray.head.default": 1}, "pending_launches": {"gpu-worker": 2},
                "node_type_mapping": {node_id: "ray.head.default"}}
    assert launchable_node_types(launcher) == ["gpu-worker", "ray.head.default"]


def test_every_infeasible_ask_is_reported_in_one_error():
    asks = [ask(CPU=4), ask(key="ranking.gpus_per_replica", what="a ranking replica", GPU=1),
            ask(key="reference.cpus_per_replica", what="a reference replica", CPU=1)]
    with pytest.raises(InfeasibleResourceError) as info:
        check_asks(asks, [node(cpu=2)])
    message = str(info.value)
    assert message.startswith("2 resource ask(s)")
    assert "generation.cpus_per_replica asks 4 CPU" in message
    assert "ranking.gpus_per_replica asks 1 GPU per ranking replica" in message
    assert "reference.cpus_per_replica" not in message
    assert [c.status for c in info.value.checks] == [INFEASIBLE, INFEASIBLE, FITS]


# --- asks from a config ---------------------------------------------------------------------------


def test_asks_follow_what_each_backend_asks_ray_for(tmp_path):
    hf = generation_asks(config(tmp_path, "generation.backend=hf", "generation.num_replicas=3",
                                "generation.cpus_per_replica=2"))
    assert [(a.bundle, a.count, a.gang) for a in hf] == [({"CPU": 2.0}, 3, True)]
    vllm = generation_asks(config(tmp_path, "generation.backend=vllm", "generation.num_replicas=3",
                                  "generation.tensor_parallel_size=2",
                                  "generation.gpus_per_replica=1"))
    # One engine (a placement group of TP bundles) is enough: the pool autoscales 1..3.
    assert [(a.bundle, a.count, a.count_key) for a in vllm] == [
        ({"GPU": 1.0, "CPU": 1.0}, 2, "generation.tensor_parallel_size")]
    train = training_asks(config(tmp_path, "training.num_workers=4", "training.use_gpu=true"))
    assert [(a.bundle, a.count, a.gang) for a in train] == [({"CPU": 1.0, "GPU": 1.0}, 4, True)]
    simpo = {a.key for a in asks_for_config(config(tmp_path, "loss.name=simpo"))}
    assert not any(k.startswith("reference.") for k in simpo)


# --- real Ray --------------------------------------------------------------------------------------


def test_check_cluster_on_the_local_ray_fails_within_seconds(tmp_path, ray_cluster):
    assert autoscaling_node_types() == []  # a local Ray cannot grow
    started = time.monotonic()
    with pytest.raises(InfeasibleResourceError, match=re.escape("generation.cpus_per_replica asks 4 CPU")):
        check_cluster(generation_asks(config(tmp_path, "generation.cpus_per_replica=4")))
    assert time.monotonic() - started < 10


def test_check_cluster_waits_where_the_cluster_is_declared_autoscaling(
        tmp_path, ray_cluster, monkeypatch, caplog):
    monkeypatch.setenv("AIPO_RAY_AUTOSCALING", "1")
    with caplog.at_level("WARNING", logger="aipo_ray.resources"):
        checks = check_cluster(generation_asks(config(tmp_path, "generation.cpus_per_replica=4")))
    assert [c.status for c in checks] == [WAITS]
    assert "waits for the autoscaler" in caplog.text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overrides, key", [
    (["generation.cpus_per_replica=4"], "generation.cpus_per_replica asks 4 CPU"),
    (["training.num_workers=3", "training.cpus_per_worker=1"], "training.num_workers asks 3 ×"),
    (["training.use_gpu=true"], "training.gpus_per_worker asks 1 CPU, 1 GPU per training worker"),
])
def test_a_run_with_an_impossible_ask_fails_before_any_stage(tmp_path, ray_cluster, overrides, key):
    from aipo_ray.pipeline.driver import run

    started = time.monotonic()
    with pytest.raises(InfeasibleResourceError, match=re.escape(key)):
        run(config(tmp_path, *overrides))
    assert time.monotonic() - started < 60
    # Nothing started: no run.json, no iteration; only the log of the attempt, which holds why.
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == ["logs"]
    assert key in (run_dir / "logs" / "driver.log").read_text()


# --- `aipo validate --address` against a cluster of its own ----------------------------------------


@pytest.fixture(scope="module")
def ray_head():
    """A 2-CPU head of our own, stopped by killing its process group (never `ray stop`: that
    stops every cluster on the machine)."""
    ports = [free_port() for _ in range(6)]
    # Ray's socket paths must stay under 107 bytes: pytest's tmp_path is too deep.
    temp_dir = tempfile.mkdtemp(prefix="aipo-ray-", dir="/tmp")
    log = Path(temp_dir) / "head.log"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         f"--port={ports[0]}", "--num-cpus=2", "--object-store-memory=100000000",
         "--include-dashboard=false", f"--dashboard-agent-listen-port={ports[1]}",
         f"--dashboard-agent-grpc-port={ports[2]}", f"--runtime-env-agent-port={ports[3]}",
         f"--metrics-export-port={ports[4]}", f"--ray-client-server-port={ports[5]}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=child_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in log.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            kill_group(proc)
            raise AssertionError(f"ray head did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield f"127.0.0.1:{ports[0]}"
    kill_group(proc)
    subprocess.run(["rm", "-rf", temp_dir], check=False)


def validate(address: str, *overrides: str) -> subprocess.CompletedProcess:
    aipo = Path(sys.executable).parent / "aipo"
    return subprocess.run(
        [str(aipo), "validate", str(REPO / "pipelines" / "configs" / "tiny_cpu.yaml"),
         "--address", address, *overrides],
        env=child_env(), capture_output=True, text=True, timeout=120, cwd=REPO,
    )


@pytest.mark.timeout(240)
def test_validate_address_reports_each_ask_and_exits_2_on_an_impossible_one(ray_head):
    ok = validate(ray_head)
    assert ok.returncode == 0, ok.stderr[-3000:]
    lines = ok.stdout.strip().splitlines()
    assert lines and all(line.startswith(FITS) for line in lines), ok.stdout
    assert any("training.cpus_per_worker" in line for line in lines)

    bad = validate(ray_head, "generation.cpus_per_replica=4")
    assert bad.returncode == 2, bad.stdout + bad.stderr[-3000:]
    assert "generation.cpus_per_replica asks 4 CPU" in bad.stderr
    assert "largest node: 2 CPU, 0 GPU" in bad.stderr
    statuses = [line.split()[0] for line in bad.stdout.strip().splitlines()]
    assert INFEASIBLE in statuses and FITS in statuses
