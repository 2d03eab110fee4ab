"""The nodes of a Ray cluster: what a sweep may ask of them, and what it checks before trusting
them with work.

Three things go wrong on a real cluster that a one-machine sweep never sees, each once seen as a
hang or a silent lie:

* A request no single node can meet waits forever. `ray.available_resources()` sums the
  cluster: a teacher task that asked for "all the CPUs" (3 on a 1-CPU head + 2-CPU worker) never
  started ("preparing teachers: 0/2 done" for 400 s). Every task kdtune sizes itself is sized
  from one node's own resources (`teacher_task_options`, `measure_task_options`), and trial
  resources that fit no node are refused up front (`check_trial_fits`).
* A node that Ray gives a GPU but whose torch cannot see CUDA (a CPU-only wheel, a missing
  driver) runs the trial on its CPU, 50x slower, under a GPU label. Such a worker fails at once
  with one line naming the node and the torch build (`check_worker`), and every row records the
  device the trial really ran on. `KDTUNE_TEST_LOGICAL_GPUS=1` is the test suite's way to get
  GPU scheduling on CPU-only machines (Ray's logical `num_gpus`): with it a GPU-labelled worker
  without CUDA runs on the CPU; it is refused wherever real CUDA is present.
* Nodes with other library versions unpickle the driver's objects wrongly or not at all. The
  code itself travels with the job (Ray's `runtime_env` `py_modules`: kdtune need not be
  installed on a worker); torch, torchvision and Ray must already match, and are checked on
  every node at the start (`check_cluster`) and again on a node's first piece of work, so a node
  the autoscaler adds later is checked too.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import version
from pathlib import Path

from ..errors import KDTuneError
from ._ray import ray

LOGICAL_GPUS_ENV = "KDTUNE_TEST_LOGICAL_GPUS"
KDTUNE_DIR = Path(__file__).resolve().parents[1]


def local_versions() -> dict[str, str]:
    """What must match across nodes: objects cross between them as pickles (Ray's needs its
    own exact version; torch and torchvision keep their tensor and module formats within a
    minor release; pickled code needs the same Python minor)."""
    return {"python": platform.python_version(), "ray": ray.__version__,
            "torch": version("torch"), "torchvision": version("torchvision")}


def _minor(v: str) -> str:
    return ".".join(v.split("+")[0].split(".")[:2])


def version_mismatch(expected: dict, found: dict) -> str | None:
    """The first library whose version on a node is incompatible with the driver's, as words."""
    for lib in ("ray", "torch", "torchvision", "python"):
        want, got = expected[lib], found[lib]
        same = want == got if lib == "ray" else _minor(want) == _minor(got)
        if not same:
            need = "the same version" if lib == "ray" else "the same major.minor"
            return f"{lib} {got} there, {want} on the driver (kdtune needs {need} on every node)"
    return None


def node_label() -> str:
    """How a node is named in messages and rows: its IP and the start of Ray's node id (the IP
    alone does not tell apart several nodes of one machine)."""
    ctx = ray.get_runtime_context()
    return f"node {ray.util.get_node_ip_address()} ({ctx.get_node_id()[:8]})"


def torch_build() -> str:
    import torch

    cuda = torch.version.cuda
    return f"torch {torch.__version__} ({f'CUDA {cuda} build' if cuda else 'CPU-only build'})"


def logical_gpus(env=os.environ) -> bool:
    return env.get(LOGICAL_GPUS_ENV) == "1"


def check_gpu_assignment(gpu_ids: list, cuda_available: bool, node: str, build: str,
                         env=os.environ) -> None:
    """Fail at once, in one line, where Ray's GPU label and the node's torch disagree."""
    if logical_gpus(env) and cuda_available:
        raise KDTuneError(f"{LOGICAL_GPUS_ENV}=1 is a test-only switch (logical GPUs on CPU-only "
                          f"nodes) and is refused on {node}, which has CUDA; unset it")
    if gpu_ids and not cuda_available and not logical_gpus(env):
        raise KDTuneError(f"{node}: Ray gave this work GPU {','.join(map(str, gpu_ids))} but "
                          f"{build} there cannot see CUDA; install a CUDA build of torch on "
                          "that node (and its NVIDIA driver), or start it without GPUs")


def check_worker(expected: dict) -> dict:
    """First thing in every trial, teacher task and measurement on a cluster node: versions
    and GPU assignment (a node the autoscaler added after the start-up check gets checked
    here). Returns where the work runs, for its result row."""
    import torch

    import kdtune

    node = node_label()
    wrong = version_mismatch(expected, local_versions())
    if wrong:
        raise KDTuneError(f"{node}: {wrong}")
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    check_gpu_assignment(gpu_ids, torch.cuda.is_available(), node, torch_build())
    return {"node": node, "ray_gpu_ids": ",".join(gpu_ids) or None,
            "kdtune_path": str(Path(kdtune.__file__).resolve().parent)}


# --- the driver's view ------------------------------------------------------------------------


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def runtime_env() -> dict:
    """What every worker of the sweep's job gets: kdtune's code (so a node needs only the
    libraries), and the logical-GPU test switch where the driver has it."""
    env = {"py_modules": [str(KDTUNE_DIR)]}
    if logical_gpus():
        env["env_vars"] = {LOGICAL_GPUS_ENV: "1"}
    return env


def _node_facts(run_dir: str | None) -> dict:
    import torch

    import kdtune

    return {"node": node_label(), "versions": local_versions(), "build": torch_build(),
            "cuda": torch.cuda.is_available(), "logical_gpus": logical_gpus(),
            "kdtune_path": str(Path(kdtune.__file__).resolve().parent),
            "sees_run_dir": run_dir is None or Path(run_dir).is_dir()}


def check_cluster(expected: dict, run_dir: str | None) -> list[dict]:
    """Check every alive node before any work is scheduled (one zero-CPU task pinned to each,
    run in parallel); the first problem is a KDTuneError naming the node. `run_dir` is a local
    run folder Ray Tune will write trial checkpoints into, which every node must see (a URI or
    a shared filesystem); None for a run at a URI."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes()
    task = ray.remote(num_cpus=0)(_node_facts)
    facts = ray.get([task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(run_dir) for n in nodes])
    for n, f in zip(nodes, facts):
        wrong = version_mismatch(expected, f["versions"])
        if wrong:
            raise KDTuneError(f"{f['node']}: {wrong}")
        gpus = n["Resources"].get("GPU", 0)
        if gpus and not f["cuda"] and not f["logical_gpus"]:
            raise KDTuneError(f"{f['node']} offers Ray {gpus:g} GPU(s) but {f['build']} there "
                              "cannot see CUDA; install a CUDA build of torch on that node, or "
                              "start it without GPUs")
        # the switch on a node with CUDA: refused by the same check every worker runs
        check_gpu_assignment([], f["cuda"], f["node"], f["build"],
                             env={LOGICAL_GPUS_ENV: "1"} if f["logical_gpus"] else {})
        if not f["sees_run_dir"]:
            raise KDTuneError(f"{f['node']} cannot see the run folder {run_dir}: on a cluster, "
                              "put it on storage every node reaches (--out s3://bucket/run, "
                              "gs://..., or a shared filesystem path)")
    return facts


def _cpus(n: dict) -> int:
    return int(n["Resources"].get("CPU", 0))


def check_trial_fits(nodes: list[dict], cpu: float, gpu: float) -> None:
    """Trial resources that no single node has would leave every trial pending forever."""
    if any(n["Resources"].get("CPU", 0) >= cpu and n["Resources"].get("GPU", 0) >= gpu
           for n in nodes):
        return
    sizes = ", ".join(sorted({f"{_cpus(n)} CPU + {n['Resources'].get('GPU', 0):g} GPU"
                              for n in nodes}))
    raise KDTuneError(f"search.resources: a trial asks for {cpu:g} CPU + {gpu:g} GPU, which no "
                      f"node of this cluster has (nodes: {sizes}); lower search.resources.cpu "
                      "or .gpu, or add a node that size (an autoscaling cluster/*.yaml "
                      "cluster: start its GPU workers first, `python cluster/gpus.py N`)")


def teacher_task_options(nodes: list[dict], use_gpu: bool) -> dict:
    """Resources of one teacher task. GPUs: one each, so distinct teachers train in parallel,
    one per free GPU. CPU clusters: the CPU count of the smallest node that has any, so a task
    fits on every node, and spread, so two teachers land on two nodes rather than queueing for
    the biggest one."""
    if use_gpu:
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": max(1, min(c for c in map(_cpus, nodes) if c > 0)),
            "scheduling_strategy": "SPREAD"}


def measure_task_options(nodes: list[dict], use_gpu: bool, cpu_threads: int) -> dict:
    """The latency task: a GPU if there is one, and measure.cpu_threads CPUs, fewer where no
    eligible node has that many (the measurement then uses and records that many threads)."""
    eligible = [n for n in nodes if not use_gpu or n["Resources"].get("GPU", 0) >= 1]
    cpus = max(1, min(cpu_threads, max(map(_cpus, eligible))))
    return {"num_gpus": 1 if use_gpu else 0, "num_cpus": cpus}
