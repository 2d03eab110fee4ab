"""Node loss: a worker node of a real 2-node local Ray cluster (`ray.cluster_utils.Cluster`)
killed mid-sweep, its raylet and every process on it at once, as when a machine dies.

* `kdtune sweep --address`, in its own process as a user runs it: two teachers (one per node:
  SPREAD), four trials at a time (two per node). Once both trials on the worker have written an
  epoch checkpoint, the worker is killed. The sweep finishes (exit 0) with every planned trial
  exactly once in trials.parquet, all completed; the worker's trials restarted on the head
  from their last checkpoint (search.max_failures; the `restarts` column, the progress line);
  epochs.parquet holds each (trial, epoch) once, epochs 1..epochs_trained; trials that needed
  the dead node's teacher after it was gone got it, and no teacher was prepared twice.
* The case that sweep meets only by chance, forced: the surviving node never fetched the dead
  node's teacher and a trial holds its only CPU while it waits for it. Rebuilt by lineage
  (its task re-run, needing CPUs the trial holds) it would never come; kept on the driver's
  node (run.prepare_teachers) it never has to.
* ResultsWriter on a restart from a checkpoint older than the last reported epoch (what
  search.checkpoint_every_s makes usual), search.max_failures checked like the other keys, and
  --resume of a run whose sweep.yaml predates the key.

About two minutes on 2 CPUs.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from test_cluster import local_cluster
from test_sweep import assert_one_line_error, cli_env, kdtune_cmd, write_sweep

from kdtune.cli import main
from kdtune.config import load_sweep_config

SEARCH = {
    "name": "nodeloss",
    # a grid over the stem, three seeds: stem A x 3 then stem B x 3, four at once (two per
    # node). Whichever teacher the dead node held, a trial needing it starts or restarts after
    # the node is gone: B's (the first four hold one B) by the B trials not yet started, A's
    # by the A trial(s) among the worker's two, which restart.
    "space": {"stem": {"type": "grid", "values": ["standard", "cifar"]}},
    "sampler": "grid", "seeds": [0, 1, 2], "search_seed": 0,
    "max_concurrent": 4, "scheduler": "fifo", "resources": {"cpu": 1},
    "measure_after": False, "max_failures": 2,
    # a checkpoint every second or so (every epoch or two here): the worker's trials have one
    # early, and are often killed epochs past it
    "checkpoint_every_s": 1.0,
}
PLANNED = 6
TRAIN_EPOCHS = 8
EPOCHS = TRAIN_EPOCHS + 1  # + the fine-tune epoch
# Ray declares a node dead when its health checks fail: here every second, three in a row
# (the defaults take some 15 s)
FAST_HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
TIMEOUT = 240
TEACHER_LINE = re.compile(r"teacher cnn4/(\w+): (trained in|cache hit)")


def checkpoint_epochs(run: Path, seen: dict) -> dict[str, int]:
    """Trial id -> the epoch of its latest checkpoint in RUN/ray (Tune copies each into
    <trial dir>/checkpoint_NNNNNN; one still being copied is skipped until whole)."""
    out = {}
    for trial_dir in (run / "ray").glob("*_*"):
        ckpts = sorted(trial_dir.glob("checkpoint_*/trial_ckpt.pt"))
        if not ckpts:
            continue
        if ckpts[-1] not in seen:
            try:
                seen[ckpts[-1]] = int(torch.load(ckpts[-1], map_location="cpu",
                                                 weights_only=True)["epoch"])
            except Exception:  # noqa: BLE001 - half copied, or replaced meanwhile: next poll
                continue
        out[trial_dir.name.split("_")[1]] = seen[ckpts[-1]]
    return out


def finished(run: Path) -> set[str]:
    try:
        return set(pd.read_parquet(run / "trials.parquet")["trial_id"])
    except (OSError, ValueError, KeyError):  # not written yet
        return set()


@pytest.fixture(scope="module")
def node_lost(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodeloss")
    space = write_sweep(tmp, SEARCH, tmp / "cache",
                        train={"epochs": TRAIN_EPOCHS, "batch_size": 64, "lr": 0.05})
    out = tmp / "run"
    with local_cluster(tmp, {"num_cpus": 2, "_system_config": FAST_HEALTH_CHECK},
                       {"num_cpus": 2}) as cluster:
        (worker,) = cluster.worker_nodes
        head_id = cluster.head_node.node_id
        so, se = tmp / "sweep.stdout", tmp / "sweep.stderr"
        t0 = time.time()
        rc = killed_at = at_kill = None
        with open(so, "w") as fo, open(se, "w") as fe:
            proc = subprocess.Popen(kdtune_cmd("sweep", space, "--address", cluster.address,
                                               "--out", out), stdout=fo, stderr=fe,
                                    env=cli_env())
            try:
                # Four trials at once on 2 + 2 CPUs: two on each node. Once four trials have
                # an epoch checkpoint short of the last epoch, both of the worker's have one.
                deadline, seen = time.time() + 150, {}
                while True:
                    running = {t for t, e in checkpoint_epochs(out, seen).items()
                               if e < EPOCHS}
                    done = finished(out)
                    if len(running - done) >= 4:
                        break
                    assert proc.poll() is None, "the sweep ended before the node was killed:" \
                        f"\n{so.read_text()[-3000:]}{se.read_text()[-2000:]}"
                    assert time.time() < deadline, "no four trials running with a checkpoint " \
                        f"after 150 s:\n{so.read_text()[-3000:]}"
                    time.sleep(0.1)
                # the first four (see SEARCH): none may have ended before four had checkpoints
                assert not done, "a trial ended before four ran with a checkpoint: trials " \
                    f"too short for this machine (raise TRAIN_EPOCHS)\n{so.read_text()}"
                at_kill = checkpoint_epochs(out, seen)
                killed_at = time.time()
                cluster.remove_node(worker, allow_graceful=False)
                rc = proc.wait(timeout=max(1.0, TIMEOUT - (time.time() - t0)))
            except subprocess.TimeoutExpired:
                pass
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        stdout, stderr = so.read_text(), se.read_text()
        assert rc is not None, f"the sweep hung after the node was killed:\n{stdout[-4000:]}"
        assert rc == 0, stdout[-3000:] + stderr[-3000:]
        prepared = [m.group(1) for p in Path(cluster.head_node.get_logs_dir_path()).glob(
            "worker-*.out") for m in TEACHER_LINE.finditer(p.read_text(errors="replace"))]
    return SimpleNamespace(
        dir=out, stdout=stdout, stderr=stderr, worker=worker.node_id[:8], head=head_id[:8],
        running=running, at_kill=at_kill, killed_at=killed_at, wall=time.time() - t0,
        prepared=prepared,
        trials=pd.read_parquet(out / "trials.parquet"),
        epochs=pd.read_parquet(out / "epochs.parquet"),
        teachers=json.loads((out / "teachers.json").read_text()))


def test_the_sweep_finishes_with_every_trial_exactly_once(node_lost):
    df = node_lost.trials
    assert len(df) == PLANNED and df["trial_id"].is_unique, df[["trial_id", "status"]]
    assert (df["status"] == "completed").all(), df[["trial_id", "status", "error"]]
    assert (df["epochs_trained"] == EPOCHS).all(), df[["trial_id", "epochs_trained"]]
    assert df["test_acc"].notna().all()
    assert len(list((node_lost.dir / "checkpoints").glob("*.pt"))) == PLANNED
    assert "Traceback" not in node_lost.stdout + node_lost.stderr, node_lost.stderr[-3000:]


def test_the_lost_nodes_trials_restarted_on_the_survivor_from_their_checkpoint(node_lost):
    df = node_lost.trials.set_index("trial_id")
    restarted = df[df["restarts"] > 0]
    # the worker ran two of the four trials running at the kill, and only those failed
    assert len(restarted) == 2 and set(restarted.index) <= node_lost.running, \
        (df["restarts"], node_lost.at_kill)
    assert (restarted["restarts"] == 1).all()
    assert restarted["node"].str.contains(f"({node_lost.head})", regex=False).all()
    # one line each, naming the dead node, from the checkpoint it had when the node died
    lines = re.findall(r"\[nodeloss\] trial (\w+) failed on node \S+ \((\w+)\) \(.+\); "
                       r"restarting it from its epoch (\d+) checkpoint.*\(restart 1 of at most "
                       r"2\)", node_lost.stdout)
    assert sorted(t for t, _, _ in lines) == sorted(restarted.index), node_lost.stdout
    for _, node, epoch in lines:
        assert node == node_lost.worker and int(epoch) >= 1


def test_restarted_epochs_are_counted_once(node_lost):
    df, ep = node_lost.trials, node_lost.epochs
    assert not ep.duplicated(["trial_id", "epoch"]).any()
    assert set(ep["trial_id"]) == set(df["trial_id"])
    for _, r in df.iterrows():
        got = sorted(ep.loc[ep["trial_id"] == r["trial_id"], "epoch"])
        assert got == list(range(1, int(r["epochs_trained"]) + 1)), (r["trial_id"], got)
    assert ep["val_acc"].between(0, 1).all()


def test_the_dead_nodes_teacher_served_the_trials_that_needed_it_afterwards(node_lost):
    teachers = node_lost.teachers
    assert len(teachers) == 2 and len({t["node"] for t in teachers}) == 2, teachers
    (dead,) = [t for t in teachers if f"({node_lost.worker})" in t["node"]]
    df = node_lost.trials
    after = df[(df["teacher.stem"] == dead["stem"]) & (
        (df["restarts"] > 0) | (df["started_at"] > node_lost.killed_at))]
    assert not after.empty, df[["trial_id", "teacher.stem", "restarts", "started_at"]]
    assert (after["status"] == "completed").all()
    assert after["teacher_test_acc"].tolist() == pytest.approx([dead["test_acc"]] * len(after))
    # and it was not prepared again (no lineage rebuild): one preparation per teacher, in the
    # cluster's worker logs
    assert sorted(node_lost.prepared) == ["cifar", "standard"], node_lost.prepared


# --- a teacher outlives the node that prepared it ---------------------------------------------


def test_a_teacher_outlives_its_node_while_a_trial_holds_every_cpu(tmp_path):
    """Ray would rebuild a lost teacher by re-running its task, which needs a node's CPUs; the
    trials that wait for it in ray.get hold theirs in Tune's placement groups, which a blocked
    actor does not give back. Here the surviving node's only CPU is held that way: before
    run.prepare_teachers kept teachers on the driver's node, this waited forever."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from kdtune.data import load_split
    from kdtune.sweep import resolve_paths
    from kdtune.sweep._ray import ray
    from kdtune.sweep.nodes import alive_nodes, local_versions, runtime_env
    from kdtune.sweep.run import prepare_teachers

    space = write_sweep(tmp_path, dict(SEARCH, name="pinned"), tmp_path / "cache",
                        teacher={"arch": "cnn4", "stem": "cifar", "epochs": 1,
                                 "batch_size": 64})
    sw = load_sweep_config(space)
    base = resolve_paths(sw.base.to_dict())
    split = load_split(sw.base.data, base["cache_dir"])
    # `head`: a resource only the head has, to put the "trial" there
    head = {"num_cpus": 1, "resources": {"head": 1}, "_system_config": FAST_HEALTH_CHECK}
    with local_cluster(tmp_path, head, {"num_cpus": 1}) as cluster:
        (worker,) = cluster.worker_nodes
        ray.init(address=cluster.address, runtime_env=runtime_env(), log_to_driver=False)
        try:
            teachers = prepare_teachers(sw, base, split, ray.put(split), False, False,
                                        tmp_path, alive_nodes(), local_versions())
            metas = json.loads((tmp_path / "teachers.json").read_text())
            lost = [m for m in metas if f"({worker.node_id[:8]})" in m["node"]]
            assert len(lost) == 1, metas  # SPREAD: one teacher on each node

            @ray.remote(num_cpus=1)
            class Trial:
                def fetch(self, refs):
                    t0 = time.time()
                    try:
                        t = ray.get(refs[0], timeout=60)
                        return f"got {t.key} after {time.time() - t0:.1f}s"
                    except ray.exceptions.GetTimeoutError:
                        return f"still waiting after {time.time() - t0:.0f}s"

            pg = placement_group([{"CPU": 1, "head": 1}])
            ray.get(pg.ready(), timeout=60)
            trial = Trial.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote()
            ray.get(trial.__ray_ready__.remote(), timeout=60)
            cluster.remove_node(worker, allow_graceful=False)
            got = ray.get(trial.fetch.remote([teachers[lost[0]["key"]]]), timeout=120)
            assert got.startswith(f"got {lost[0]['key']}"), got
        finally:
            ray.shutdown()


# --- the writer, the key, resuming older runs -------------------------------------------------


def _writer(tmp_path, quiet=False):
    from kdtune.storage import RunStore
    from kdtune.sweep import resolve_paths
    from kdtune.sweep.writer import ResultsWriter

    sw = load_sweep_config(write_sweep(tmp_path, SEARCH, tmp_path / "cache"))
    store = RunStore(tmp_path / "run", str(tmp_path / "cache"))
    store.prepare_local()
    return ResultsWriter(store, resolve_paths(sw.base.to_dict()), sw, {}, "synthetic",
                         PLANNED, 4, quiet=quiet)


def _fake_trial(tid):
    return SimpleNamespace(trial_id=tid, config={"stem": "cifar", "seed": 0}, last_result={},
                           latest_checkpoint_result=None, checkpoint=None, error_file=None,
                           status="RUNNING")


def _report(w, trial, epoch, final=False):
    w.on_trial_result(0, [], trial, {"epoch": epoch, "phase": "train", "val_acc": epoch / 10,
                                     "train_loss": 1.0, "lr": 0.1, "final": final})


def test_a_restart_from_an_older_checkpoint_drops_the_epochs_it_redoes(tmp_path, capsys):
    w = _writer(tmp_path)
    older, fresh = _fake_trial("older"), _fake_trial("fresh")
    for e in (1, 2, 3, 4):
        _report(w, older, e)
    _report(w, fresh, 1)
    # killed at epoch 4, its last checkpoint at epoch 2 (search.checkpoint_every_s)
    older.latest_checkpoint_result = SimpleNamespace(metrics={"epoch": 2, "val_acc": 0.2})
    w.on_trial_recover(0, [], older)
    w.on_trial_recover(0, [], fresh)  # no checkpoint yet: starts over
    out = capsys.readouterr().out
    assert "trial older failed (unknown error); restarting it from its epoch 2 checkpoint, " \
        "redoing epochs 3-4 (restart 1 of at most 2)" in out, out
    assert "trial fresh failed (unknown error); restarting it from the start (restart 1 " in out
    assert sorted(e for t, e in w.epochs if t == "older") == [1, 2]
    assert not [k for k in w.epochs if k[0] == "fresh"]
    assert w.get_state()["restarts"] == {"older": 1, "fresh": 1}
    for e in (3, 4):
        _report(w, older, e)
    _report(w, older, 5, final=True)
    w.on_trial_complete(0, [], older)
    ep = pd.read_parquet(tmp_path / "run" / "epochs.parquet")
    rows = pd.read_parquet(tmp_path / "run" / "trials.parquet").set_index("trial_id")
    assert sorted(ep.loc[ep["trial_id"] == "older", "epoch"]) == [1, 2, 3, 4, 5]
    assert rows.loc["older", "restarts"] == 1 and rows.loc["older", "epochs_trained"] == 5
    assert ep.loc[(ep["trial_id"] == "older") & (ep["epoch"] == 3), "val_acc"].item() == 0.3
    # the count travels in Tune's snapshot, so a resumed sweep keeps it
    again = _writer(tmp_path / "again", quiet=True)
    again.set_state(w.get_state())
    assert again.restarts == {"older": 1, "fresh": 1}


@pytest.mark.parametrize("value", [-1, 1.5, "two", True])
def test_max_failures_must_be_a_count(value, tmp_path, capsys):
    path = write_sweep(tmp_path, dict(SEARCH, max_failures=value), tmp_path / "cache")
    assert_one_line_error(capsys, main(["validate", str(path)]), "search.max_failures")


def test_max_failures_defaults_to_two():
    raw = copy.deepcopy(SEARCH)
    del raw["max_failures"]
    from kdtune.config import sweep_config

    assert sweep_config({"search": raw}).search.max_failures == 2


def _old_run(tmp_path, **search):
    """A run folder as a kdtune without search.max_failures left it: its sweep.yaml lacks the
    key (written the way run_sweep writes it, then the key removed)."""
    space = write_sweep(tmp_path, dict(SEARCH, name="old", **search), tmp_path / "cache")
    sw = load_sweep_config(space)
    from kdtune.sweep import resolve_paths

    resolved = {**resolve_paths(sw.base.to_dict()),
                "search": {**sw.search.__dict__, "asha": sw.search.asha.__dict__,
                           "resources": sw.search.resources.__dict__}}
    resolved = yaml.safe_load(yaml.safe_dump(resolved, sort_keys=False))
    del resolved["search"]["max_failures"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "sweep.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    return space, run, resolved


def test_a_key_an_old_sweep_yaml_lacks_counts_as_its_default(tmp_path):
    from kdtune.sweep.resume import first_difference, portable, with_defaults

    _, _, stored = _old_run(tmp_path, objectives={"flops": "min"})
    filled = with_defaults(stored)
    assert filled["search"]["max_failures"] == 2
    assert filled["search"]["objectives"] == {"flops": "min"}  # a user's mapping: left whole
    current = copy.deepcopy(filled)
    assert first_difference(portable(current), portable(filled)) is None
    current["search"]["max_failures"] = 0
    assert first_difference(portable(current), portable(with_defaults(stored))) == \
        "search.max_failures"


def test_resuming_a_run_from_before_max_failures(tmp_path, capsys, monkeypatch):
    from kdtune.sweep import run as run_module

    space, run, _ = _old_run(tmp_path)
    # another value than the one it ran with (the default): refused, naming the key
    rc = main(["sweep", str(space), "--out", str(run), "--resume",
               "--set", "search.max_failures=0"])
    assert_one_line_error(capsys, rc, "search.max_failures")

    class Passed(Exception):
        pass

    def stop(*a, **k):  # the first thing after the comparison: it let the resume through
        raise Passed

    monkeypatch.setattr(run_module, "load_split", stop)
    for key, value in (("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1e9"),
                       ("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")):  # what run_sweep sets, undone
        monkeypatch.setenv(key, value)
    with pytest.raises(Passed):
        run_module.run_sweep(space, resume=True, out=run)
