"""What only a multi-node Ray cluster or a GPU node runs, run here on CPUs.

Real local Ray clusters (`ray.cluster_utils.Cluster`: a head and a worker node, each its own
raylet, sharing this machine), reached with `kdtune sweep --address` in its own process as a
user would:

* a 1-CPU head + 2-CPU worker, the layout that hung forever at "preparing teachers: 0/2 done":
  two teachers prepared at once on different nodes, each node resolving `~` in cache_dir against
  its own home, trials importing kdtune from the copy Ray shipped (runtime_env), not from this
  checkout;
* a worker with one logical GPU (Ray's num_gpus on a CPU node, through the test-only switch):
  four trials at gpu 0.25 packed onto it at once; the same cluster without the switch is refused
  in one line naming the node and its torch build;
* the driver's versions made to differ from the nodes': one line naming the node, exit 2.

Plus the pure pieces (per-node sizing, GPU checks, version comparison, old pickle names).
About a minute and a half on 2 CPUs.
"""

from __future__ import annotations

import contextlib
import pickle
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import environ
from test_sweep import BASE, SWEEP_TIMEOUT, cli_env, kdtune_cmd, write_sweep

from kdtune.errors import KDTuneError
from kdtune.sweep import nodes
from kdtune.sweep.nodes import (LOGICAL_GPUS_ENV, check_gpu_assignment, check_trial_fits,
                                measure_task_options, teacher_task_options, version_mismatch)

REPO = Path(__file__).resolve().parents[1]
HEAD_1CPU = {"Alive": True, "Resources": {"CPU": 1.0}}
WORKER_2CPU = {"Alive": True, "Resources": {"CPU": 2.0}}
GPU_WORKER = {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}}

TWO_TEACHERS = {
    "name": "cluster",
    "space": {"stem": {"type": "choice", "values": ["standard", "cifar"]},
              "kd.alpha": {"type": "uniform", "low": 0.3, "high": 0.9}},
    "num_samples": 2, "max_concurrent": 2, "seeds": [0], "search_seed": 0,
    "scheduler": "fifo", "resources": {"cpu": 1},
}
PACKED = {
    "name": "packed",
    "space": {"kd.temperature": {"type": "uniform", "low": 2, "high": 6}},
    "num_samples": 4, "max_concurrent": 4, "seeds": [0], "search_seed": 0,
    "scheduler": "fifo", "resources": {"cpu": 1, "gpu": 0.25},
}


# --- pure pieces -----------------------------------------------------------------------------


def test_tasks_are_sized_from_one_node_not_the_cluster_total():
    # the hang: 1 + 2 CPUs summed to 3, which no node has
    opts = teacher_task_options([HEAD_1CPU, WORKER_2CPU], use_gpu=False)
    assert opts["num_cpus"] == 1 and opts["scheduling_strategy"] == "SPREAD"
    assert teacher_task_options([HEAD_1CPU, GPU_WORKER], use_gpu=True) == \
        {"num_gpus": 1, "num_cpus": 1}
    # a head started with --num-cpus=0 (keep work off it) does not make tasks ask for 0 CPUs
    assert teacher_task_options([{"Alive": True, "Resources": {}}, WORKER_2CPU],
                                use_gpu=False)["num_cpus"] == 2
    assert measure_task_options([HEAD_1CPU, WORKER_2CPU], False, 8)["num_cpus"] == 2
    assert measure_task_options([HEAD_1CPU, GPU_WORKER], True, 2) == {"num_gpus": 1,
                                                                      "num_cpus": 2}


def test_trial_resources_no_node_has_are_refused_in_one_line():
    check_trial_fits([HEAD_1CPU, GPU_WORKER], cpu=2, gpu=0.25)
    with pytest.raises(KDTuneError, match=r"search.resources: a trial asks for 3 CPU \+ 0 GPU"
                       r".*nodes: 1 CPU \+ 0 GPU, 2 CPU \+ 0 GPU"):
        check_trial_fits([HEAD_1CPU, WORKER_2CPU], cpu=3, gpu=0)
    with pytest.raises(KDTuneError, match="1 GPU"):
        check_trial_fits([HEAD_1CPU, WORKER_2CPU], cpu=1, gpu=1)


def test_a_gpu_label_without_cuda_fails_unless_the_test_switch_is_on():
    build = "torch 2.11.0+cpu (CPU-only build)"
    with pytest.raises(KDTuneError, match=r"node 10.0.0.7 \(ab12cd34\): Ray gave this work GPU 0 "
                       r"but torch 2.11.0\+cpu \(CPU-only build\) there cannot see CUDA"):
        check_gpu_assignment(["0"], False, "node 10.0.0.7 (ab12cd34)", build, env={})
    check_gpu_assignment(["0"], False, "n", build, env={LOGICAL_GPUS_ENV: "1"})  # tests only
    check_gpu_assignment([], False, "n", build, env={})  # no GPU given: nothing to check
    check_gpu_assignment(["0"], True, "n", build, env={})  # the real thing
    with pytest.raises(KDTuneError, match=f"{LOGICAL_GPUS_ENV}=1 is a test-only switch"):
        check_gpu_assignment(["0"], True, "n", build, env={LOGICAL_GPUS_ENV: "1"})


def test_version_mismatch_names_the_library_and_both_versions():
    here = {"python": "3.12.3", "ray": "2.60.0", "torch": "2.11.0+cu128",
            "torchvision": "0.26.0"}
    assert version_mismatch(here, dict(here, torch="2.11.1+cpu", python="3.12.8")) is None
    assert version_mismatch(here, dict(here, torch="2.9.1")) == \
        "torch 2.9.1 there, 2.11.0+cu128 on the driver (kdtune needs the same major.minor on " \
        "every node)"
    assert "ray 2.59.0 there" in version_mismatch(here, dict(here, ray="2.59.0"))
    assert "python 3.11.7 there" in version_mismatch(here, dict(here, python="3.11.7"))


def test_runs_pickled_before_the_package_split_find_their_classes():
    from kdtune.sweep.asha import GroupedASHA
    from kdtune.sweep.remote import trainable
    from kdtune.sweep.space import SeededSearch
    from kdtune.sweep.writer import ResultsWriter

    for name, obj in (("SeededSearch", SeededSearch), ("GroupedASHA", GroupedASHA),
                      ("ResultsWriter", ResultsWriter), ("trainable", trainable)):
        # protocol 0 global reference, as the old module wrote it into tuner.pkl
        assert pickle.loads(f"ckdtune.sweep\n{name}\n.".encode()) is obj


def test_tilde_in_cache_dir_is_left_for_each_node_to_resolve():
    from kdtune.sweep import resolve_paths

    raw = {"data": {"root": None}, "cache_dir": "~/.cache/kdtune"}
    assert resolve_paths(raw)["cache_dir"] == "~/.cache/kdtune"
    raw["cache_dir"] = "rel/cache"
    assert resolve_paths(raw)["cache_dir"] == str(Path("rel/cache").resolve())


# --- real local clusters -----------------------------------------------------------------------


@contextlib.contextmanager
def local_cluster(home: Path, head: dict, worker: dict):
    """A head and a worker node on this machine whose processes see HOME=home."""
    from ray.cluster_utils import Cluster

    with environ(HOME=str(home), **{LOGICAL_GPUS_ENV: None, "RAY_ADDRESS": None}):
        cluster = Cluster(initialize_head=True, head_node_args=head, connect=False)
        cluster.add_node(**worker)
        cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def run_cli(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(kdtune_cmd(*args), capture_output=True, text=True,
                          env=cli_env(**env), timeout=SWEEP_TIMEOUT)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    (tmp / "node-home").mkdir()
    with local_cluster(tmp / "node-home", {"num_cpus": 1}, {"num_cpus": 2}) as cluster:
        yield cluster, tmp


def test_two_node_sweep_prepares_teachers_in_parallel_on_different_nodes(two_nodes):
    cluster, tmp = two_nodes
    (tmp / "driver-home").mkdir()
    # teachers long enough (8 epochs) that two workers starting a second or two apart on a
    # busy machine still overlap when they run in parallel
    space = write_sweep(tmp, TWO_TEACHERS, Path("~/kdtune-cache"),  # each node's own home
                        teacher={"arch": "cnn4", "stem": "cifar", "epochs": 8, "batch_size": 64},
                        # the post-sweep measurement runs as a Ray task here: with onnxruntime
                        measure={**BASE["measure"], "onnx": True})
    out = tmp / "run"
    proc = run_cli("sweep", space, "--address", cluster.address, "--out", out,
                   HOME=str(tmp / "driver-home"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cluster: 2 node(s) (1 CPU + 0 GPU; 2 CPU + 0 GPU)" in proc.stdout

    teachers = pd.read_json(out / "teachers.json")
    assert len(teachers) == 2 and teachers["node"].nunique() == 2, teachers
    # prepared at the same time, not one after the other
    assert teachers["started_at"].max() < teachers["finished_at"].min()
    # `~/kdtune-cache` was resolved on the nodes, against their home, not the driver's
    assert len(list((tmp / "node-home" / "kdtune-cache" / "teachers").glob("*/meta.json"))) == 2
    assert not (tmp / "driver-home" / "kdtune-cache" / "teachers").exists()

    trials = pd.read_parquet(out / "trials.parquet")
    assert (trials["status"] == "completed").all() and len(trials) == 2
    assert trials["device"].str.startswith("cpu").all()
    assert trials["node"].notna().all()
    for path in trials["kdtune_path"]:  # the shipped copy, not this checkout
        assert "runtime_resources" in path and not path.startswith(str(REPO)), path
    assert trials["latency_ms_b1_cpu"].notna().all()
    onnx = ["latency_ms_b1_onnx_fp32", "latency_ms_b1_onnx_int8", "size_mb_onnx_int8",
            "val_acc_onnx_int8", "test_acc_onnx_int8", "onnx_device"]
    assert trials[onnx].notna().all().all(), trials.filter(like="onnx").to_dict("records")
    assert trials["measure_node"].notna().all()


def test_driver_and_node_versions_that_differ_are_one_line_and_exit_2(two_nodes, tmp_path,
                                                                        monkeypatch, capsys):
    from kdtune.cli import main
    from kdtune.sweep import run

    cluster, _ = two_nodes
    fake = dict(nodes.local_versions(), torch="1.13.1")
    monkeypatch.setattr(run, "local_versions", lambda: fake)
    space = write_sweep(tmp_path, dict(TWO_TEACHERS, name="mismatch"), tmp_path / "cache")
    rc = main(["sweep", str(space), "--address", cluster.address, "--out",
               str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("kdtune: error: node "), err
    assert "torch " in err[0] and "1.13.1 on the driver" in err[0]


@pytest.fixture(scope="module")
def gpu_node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-cluster")
    with local_cluster(tmp, {"num_cpus": 1}, {"num_cpus": 4, "num_gpus": 1}) as cluster:
        yield cluster, tmp


def test_four_trials_share_one_logical_gpu_at_a_quarter_each(gpu_node):
    cluster, tmp = gpu_node
    space = write_sweep(tmp, PACKED, tmp / "cache", prune={"ratio": 0.0},
                        train={"epochs": 5, "batch_size": 64, "lr": 0.05})  # long enough to overlap
    out = tmp / "run"
    proc = run_cli("sweep", space, "--address", cluster.address, "--out", out,
                   **{LOGICAL_GPUS_ENV: "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "0.25 GPU + 1 CPU per trial" in proc.stdout
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "completed").all()
    assert set(trials["ray_gpu_ids"]) == {"0"} and trials["node"].nunique() == 1
    # all four were running at once on the one GPU
    assert trials["started_at"].max() < trials["finished_at"].min()
    # the row says where it really ran: the CPU, since the GPU is only logical here
    assert trials["device"].str.startswith("cpu").all()
    assert trials["latency_ms_b1_gpu"].isna().all() and trials["latency_ms_b1_cpu"].notna().all()


def test_a_gpu_node_whose_torch_sees_no_cuda_is_refused_in_one_line(gpu_node, tmp_path):
    cluster, _ = gpu_node
    space = write_sweep(tmp_path, PACKED, tmp_path / "cache")
    proc = run_cli("sweep", space, "--address", cluster.address, "--out", tmp_path / "run")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(err) == 1, err
    assert err[0].startswith("kdtune: error: node ") and "offers Ray 1 GPU(s) but torch " in \
        err[0] and "cannot see CUDA" in err[0]
