"""search.log_to: [mlflow] and [wandb] (kdtune.sweep.trackers), driven through the Tune callback
methods with stand-in trials: MLflow against a SQLite tracking store in a tmp folder, W&B
offline (WANDB_MODE=offline, its run files read back with tests/wandb_records.py): params or
config, per-epoch steps, MLflow's one artifact, resume without duplicates, measured metrics, and
an unreachable server. The real sweep (kill, Ctrl+C, resumes) is
tests/test_sweep.py::test_resumed_sweep_mlflow_runs and ::test_resumed_sweep_wandb_runs. About
a minute on 2 cores."""

from __future__ import annotations

import math
import socket
import sys
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from kdtune.cli import main
from kdtune.config import load_sweep_config
from kdtune.errors import KDTuneError
from kdtune.storage import RunStore
from kdtune.sweep.plan import resolve_paths, trial_cfg
from kdtune.sweep import trackers
from kdtune.sweep.trackers import (MLFLOW_MISSING, WANDB_MISSING, MLflowTracker, WandbTracker,
                                   check_trackers, log_measured, make_trackers, wandb_run_id)

mlflow = pytest.importorskip("mlflow")  # a dev install has it (pyproject's dev extra)
from mlflow.tracking import MlflowClient  # noqa: E402
from wandb_records import by_run_id, logged_steps  # noqa: E402  (tests/, next to this file)

PROV = {"git_sha": "0123abcd", "kdtune_version": "0.test"}


def write_space(folder, log_to=("mlflow",)):
    raw = {"data": {"dataset": "synthetic"}, "cache_dir": str(folder / "cache"),
           "search": {"name": "unit", "log_to": list(log_to),
                      "space": {"kd.alpha": {"type": "uniform", "low": 0.1, "high": 0.9}}}}
    path = folder / "unit.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def make_sweep(folder, log_to, **extra) -> SimpleNamespace:
    sw = load_sweep_config(write_space(folder, log_to))
    base = resolve_paths(sw.base.to_dict())
    store = RunStore(folder / "run", base["cache_dir"])
    store.prepare_local()
    (store.local / "checkpoints").mkdir()
    return SimpleNamespace(sw=sw, base=base, store=store, dir=store.local, **extra)


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return make_sweep(tmp_path, ("mlflow",), uri=uri)


def trial(tid, alpha=0.3, status="RUNNING"):
    """What the tracker reads of a ray.tune.experiment.Trial."""
    return SimpleNamespace(trial_id=tid, config={"kd.alpha": alpha}, last_result=None,
                           status=status)


def report(tracker, t, epoch, final=False, **extra):
    result = {"epoch": epoch, "phase": "train", "val_acc": 0.1 * epoch, "train_loss": 2.0 / epoch,
              "lr": 0.05, "size_mb_dense": 1.25, "checkpoint_saved": True, "final": final,
              "time_total_s": 3.0 * epoch, "training_iteration": epoch, "node": "host",
              "bad": float("nan"), **extra}
    t.last_result = result
    tracker.on_trial_result(iteration=epoch, trials=[t], trial=t, result=result)


def complete(sweep, tracker, t, epochs=3):
    (sweep.dir / "checkpoints" / f"{t.trial_id}.pt").write_bytes(b"student")  # ResultsWriter's
    report(tracker, t, epochs, final=True, test_acc=0.42)
    t.status = "TERMINATED"
    tracker.on_trial_complete(iteration=epochs, trials=[t], trial=t)


def runs_of(sweep, tid=None):
    client = MlflowClient(sweep.uri)
    exp = client.get_experiment_by_name("unit")
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if tid is None or r.data.tags.get("trial_id") == tid]


def steps(sweep, run, key="val_acc"):
    return [m.step for m in sorted(MlflowClient(sweep.uri).get_metric_history(run.info.run_id,
                                                                              key),
                                   key=lambda m: (m.step, m.timestamp))]


def new_tracker(sweep, quiet=True):
    (tracker,) = make_trackers(sweep.sw, sweep.store, sweep.base, PROV, quiet=quiet)
    tracker.setup()
    return tracker


def test_a_trial_is_one_run_with_its_config_epochs_final_metrics_and_checkpoint(sweep, capsys):
    tracker = new_tracker(sweep, quiet=False)
    assert f"MLflow: a run per trial in experiment 'unit' at {sweep.uri}" in \
        capsys.readouterr().out
    t = trial("aaaa1_00000")
    tracker.on_trial_start(iteration=0, trials=[t], trial=t)
    for epoch in (1, 2):
        report(tracker, t, epoch)
    complete(sweep, tracker, t)

    (run,) = runs_of(sweep)
    assert run.info.run_name == "aaaa1_00000" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["trial_id"], tags["sweep"], tags["git_sha"]) == ("aaaa1_00000", "unit",
                                                                  "0123abcd")
    assert tags["is_baseline"] == "false" and tags["seed"] == "0"
    assert tags["mlflow.source.git.commit"] == "0123abcd"
    # the resolved config, not Ray's trial.config
    flat = trial_cfg(sweep.base, t.config).flat()
    assert run.data.params == {k: "null" if v is None else str(v) for k, v in flat.items()}
    assert run.data.params["kd.alpha"] == "0.3" and "train.epochs" in run.data.params
    assert steps(sweep, run) == [1, 2, 3]
    assert steps(sweep, run, "test_acc") == [3] and run.data.metrics["test_acc"] == 0.42
    # Ray's keys, flags, text and NaN are not metrics
    assert not {"time_total_s", "training_iteration", "checkpoint_saved", "final", "phase",
                "node", "bad"} & set(run.data.metrics)
    arts = MlflowClient(sweep.uri).list_artifacts(run.info.run_id)
    assert [a.path for a in arts] == ["checkpoint"]
    inner = MlflowClient(sweep.uri).list_artifacts(run.info.run_id, "checkpoint")
    assert [a.path for a in inner] == ["checkpoint/aaaa1_00000.pt"]


def test_resumed_process_continues_the_same_runs_without_repeated_steps(sweep):
    a = new_tracker(sweep)
    running, interrupted, lost, errored = three_epochs_then_ctrl_c(a, 4)
    assert {r.data.tags["trial_id"]: r.info.status for r in runs_of(sweep)} == {
        running.trial_id: "RUNNING", interrupted.trial_id: "KILLED", lost.trial_id: "KILLED",
        errored.trial_id: "FAILED"}
    # (`running` as after a kill -9: nothing ended its run)

    b = new_tracker(sweep)  # the resumed process: a new callback, state only in MLflow
    fresh = [trial(running.trial_id, 0.2), trial(interrupted.trial_id, 0.3)]
    b.on_step_begin(iteration=0, trials=fresh)  # `lost` is no longer Tune's: stays KILLED
    for t in fresh:
        b.on_trial_start(iteration=0, trials=fresh, trial=t)
        assert runs_of(sweep, t.trial_id)[0].info.status == "RUNNING"
        for epoch in (2, 3, 4):  # its last checkpoint was epoch 1: redoes 2 and 3
            report(b, t, epoch)
        complete(sweep, b, t, epochs=5)

    assert len(runs_of(sweep)) == 4  # one run per trial id, none created on resuming
    for t in fresh:
        (run,) = runs_of(sweep, t.trial_id)
        assert steps(sweep, run) == [1, 2, 3, 4, 5] and run.info.status == "FINISHED"
        assert steps(sweep, run, "epoch") == [1, 2, 3, 4, 5]
    assert runs_of(sweep, lost.trial_id)[0].info.status == "KILLED"
    (run,) = runs_of(sweep, errored.trial_id)
    assert run.info.status == "FAILED"
    assert MlflowClient(sweep.uri).list_artifacts(run.info.run_id) == []


def test_resumed_run_gets_the_params_a_kill_cut_short(sweep):
    """A kill -9 between create_run and its params' log_batch (the fresh-clone CI's kill/resume
    sweep hit it) leaves a run with tags and no params, or some: --resume adds the missing ones
    and keeps the others (MLflow refuses to log a param twice with another value)."""
    a = new_tracker(sweep)
    t, u = trial("dddd1_00000", 0.4), trial("dddd2_00001", 0.6)
    client = MlflowClient(sweep.uri)
    for x in (t, u):
        client.create_run(a.experiment_id, run_name=x.trial_id, tags=a._tags(x))
    client.log_param(runs_of(sweep, u.trial_id)[0].info.run_id, "kd.alpha", "0.6")

    b = new_tracker(sweep)  # the resumed process
    for x in (t, u):
        b.on_step_begin(iteration=0, trials=[t, u])
        b.on_trial_start(iteration=0, trials=[t, u], trial=x)
        report(b, x, 1)
        complete(sweep, b, x, epochs=2)
        (run,) = runs_of(sweep, x.trial_id)
        flat = trial_cfg(sweep.base, x.config).flat()
        assert run.data.params == {k: "null" if v is None else str(v) for k, v in flat.items()}
        assert run.info.status == "FINISHED" and steps(sweep, run) == [1, 2]


def three_epochs_then_ctrl_c(tracker, n: int) -> list:
    """`n` trials report epochs 1-3; the fourth errors; Ctrl+C then ends the experiment with
    the second and third (`interrupted`, `lost`) still running."""
    trials = [trial(f"bbbb{i}_0000{i}", 0.2 + i / 10) for i in range(n)]
    for t in trials:
        tracker.on_trial_start(iteration=0, trials=[t], trial=t)
        for epoch in (1, 2, 3):
            report(tracker, t, epoch)
    errored = trials[3]
    errored.status = "ERROR"
    tracker.on_trial_error(iteration=3, trials=[errored], trial=errored)
    tracker.on_experiment_end(trials=trials[1:3])
    return trials


def measured_after_the_sweep(env, tracker):
    """A completed and an ASHA-stopped trial, then trials.parquet as measure_all leaves it and
    log_measured: returns (completed, stopped)."""
    done, stopped = trial("cccc1_00000"), trial("cccc2_00001")
    for t in (done, stopped):
        tracker.on_trial_start(iteration=0, trials=[t], trial=t)
        report(tracker, t, 1)
    report(tracker, stopped, 2)
    stopped.status = "TERMINATED"
    tracker.on_trial_complete(iteration=2, trials=[stopped], trial=stopped)  # ASHA's stop
    complete(env, tracker, done)
    df = pd.DataFrame([
        {"trial_id": done.trial_id, "status": "completed", "latency_ms_b1_cpu": 1.5,
         "latency_ms_b1_gpu": float("nan"), "throughput_ips_cpu": 900.0, "size_mb_dense": 1.25,
         "flops": 1e6, "val_acc": 0.9},
        {"trial_id": stopped.trial_id, "status": "stopped", "latency_ms_b1_cpu": float("nan"),
         "latency_ms_b1_gpu": float("nan"), "throughput_ips_cpu": float("nan"),
         "size_mb_dense": 1.25, "flops": 1e6, "val_acc": 0.2}])
    df.to_parquet(env.dir / "trials.parquet")
    log_measured([tracker], env.dir)
    return done, stopped


def test_measured_latency_is_logged_after_the_sweep_at_the_last_step(sweep):
    tracker = new_tracker(sweep)
    done, stopped = measured_after_the_sweep(sweep, tracker)

    (run,) = runs_of(sweep, done.trial_id)
    m = run.data.metrics
    assert m["latency_ms_b1_cpu"] == 1.5 and m["throughput_ips_cpu"] == 900.0
    assert m["flops"] == 1e6 and "latency_ms_b1_gpu" not in m
    assert steps(sweep, run, "latency_ms_b1_cpu") == [3]
    assert steps(sweep, run, "size_mb_dense") == [1, 3]  # already there: not logged again
    assert steps(sweep, run) == [1, 3]  # val_acc is the trial's, not re-logged
    (run,) = runs_of(sweep, stopped.trial_id)
    assert run.info.status == "FINISHED" and "latency_ms_b1_cpu" not in run.data.metrics
    assert MlflowClient(sweep.uri).list_artifacts(run.info.run_id) == []


def drive(tracker, sweep):
    t = trial("dddd1_00000")
    tracker.on_step_begin(iteration=0, trials=[t])
    tracker.on_trial_start(iteration=0, trials=[t], trial=t)
    for epoch in (1, 2):
        report(tracker, t, epoch)
    complete(sweep, tracker, t)
    tracker.on_experiment_end(trials=[t])
    log_measured([tracker], sweep.dir)


def test_closed_port_is_one_warning_and_the_sweep_goes_on(sweep, monkeypatch, capsys):
    port = closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    pd.DataFrame([{"trial_id": "dddd1_00000", "status": "completed",
                   "latency_ms_b1_cpu": 1.0}]).to_parquet(sweep.dir / "trials.parquet")
    t0 = time.time()
    tracker = new_tracker(sweep, quiet=False)
    drive(tracker, sweep)
    assert time.time() - t0 < 30  # MLflow's own retries would take minutes
    out, err = capsys.readouterr()
    warnings = [ln for ln in err.splitlines() if "MLflow" in ln]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0], err
    assert "unreachable" in warnings[0] and "goes on" in warnings[0]
    assert "MLflow: a run per trial" not in out and tracker.disabled


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dropping_server():
    """A port that accepts every connection and closes it at once: a TCP probe passes, every
    request fails."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def drop():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                pass
    threading.Thread(target=drop, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        srv.close()


def drive_against_a_dropping_server(env, monkeypatch, capsys, marker, settings):
    """A tracker made and driven with `settings(port)` set, the port a dropping server's: it
    must give up within 30 s. Returns the tracker, its stderr lines holding `marker`, and
    stderr."""
    with dropping_server() as port:
        for k, v in settings(port).items():
            monkeypatch.setenv(k, v)
        t0 = time.time()
        tracker = new_tracker(env)
        drive(tracker, env)
        took = time.time() - t0
    assert took < 30, took
    err = capsys.readouterr().err
    return tracker, [ln for ln in err.splitlines() if marker in ln], err


def test_server_that_fails_mid_sweep_is_one_warning_then_off(sweep, monkeypatch, capsys):
    """A port that accepts (the probe passes) and then drops every request: the first MLflow
    call fails after one short retry, the rest are not tried."""
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
              "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(k, raising=False)  # the tracker's short defaults, and undone after
    tracker, warnings, err = drive_against_a_dropping_server(
        sweep, monkeypatch, capsys, "MLflow",
        lambda port: {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert len(warnings) == 1 and "setup failed" in warnings[0], err
    assert tracker.disabled


def test_tracker_survives_tunes_pickle_of_the_run_config(sweep):
    import ray.cloudpickle as pickle

    tracker = new_tracker(sweep)
    copy = pickle.loads(pickle.dumps(tracker))  # tuner.pkl: no client, no SQLAlchemy engine
    assert copy._client is None and not copy.connected and copy.runs == {}
    copy.setup()
    t = trial("eeee1_00000")
    copy.on_trial_start(iteration=0, trials=[t], trial=t)
    report(copy, t, 1)
    assert steps(sweep, runs_of(sweep, t.trial_id)[0]) == [1]


def test_mlflow_missing_is_one_line_at_sweep_start(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    sw = load_sweep_config(write_space(tmp_path))
    with pytest.raises(KDTuneError) as e:
        check_trackers(sw)
    assert str(e.value) == MLFLOW_MISSING
    assert "pip install 'kdtune[mlflow]'" in MLFLOW_MISSING
    out = tmp_path / "run"
    assert main(["sweep", str(write_space(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kdtune: error: {MLFLOW_MISSING}"]
    assert not out.exists()  # refused before anything was written or Ray started
    check_trackers(load_sweep_config(write_space(tmp_path, log_to=())))  # not asked: fine


@pytest.mark.parametrize("log_to, needle", [(["neptune"], "unknown target 'neptune'; allowed: "
                                             "mlflow, wandb"),
                                            ("mlflow", "expected a list"),
                                            (["mlflow", "mlflow"], "duplicates")])
def test_bad_log_to_is_a_one_line_error(tmp_path, log_to, needle):
    path = write_space(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["search"]["log_to"] = log_to
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(KDTuneError) as e:
        load_sweep_config(path)
    msg = str(e.value)
    assert msg.startswith("search.log_to: ") and needle in msg and "\n" not in msg


def test_number_filter():
    from kdtune.sweep.trackers import _number
    import numpy as np

    assert _number(np.float32(0.5)) == 0.5 and _number(3) == 3.0
    assert _number(True) is None and _number("x") is None and _number(None) is None
    assert _number(math.inf) is None and _number(float("nan")) is None


def test_tracker_class_is_rays_mlflow_callback():
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    assert issubclass(MLflowTracker, MLflowLoggerCallback)


# --- Weights & Biases ----------------------------------------------------------------------------

@pytest.fixture
def wb(tmp_path, monkeypatch):
    """A sweep with log_to: [wandb], W&B offline, its user-wide files (settings, API key, cache)
    in tmp; W&B's process-wide setup is torn down around each test, so it reads this test's
    environment."""
    wandb = pytest.importorskip("wandb")
    import os

    for k in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(k)
    home = tmp_path / "home"
    home.mkdir()
    for k, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                   ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(k, str(home / sub))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    wandb.teardown()
    yield make_sweep(tmp_path, ("wandb",), cwd=cwd)
    wandb.teardown()


def ledger(wb) -> dict:
    import json

    return json.loads((wb.dir / "wandb" / "kdtune-runs.json").read_text())["runs"]


def test_wandb_trial_is_one_run_with_its_config_epochs_and_final_summary(wb, capsys):

    tracker = new_tracker(wb, quiet=False)
    out = capsys.readouterr().out
    assert f"W&B: a run per trial in group 'unit' of project 'unit', offline in {wb.dir}/wandb " \
        f"(upload: wandb sync {wb.dir}/wandb/offline-run-*)" in out, out
    t = trial("aaaa1_00000")
    tracker.on_trial_start(iteration=0, trials=[t], trial=t)
    for epoch in (1, 2):
        report(tracker, t, epoch)
    complete(wb, tracker, t)

    runs = by_run_id(wb.dir)
    assert list(runs) == [wandb_run_id("unit", t.trial_id)]
    assert wandb_run_id("unit", t.trial_id) != wandb_run_id("other", t.trial_id)
    (run,) = runs[wandb_run_id("unit", t.trial_id)]
    assert (run.name, run.group, run.project) == ("unit-aaaa1_00000", "unit", "unit")
    assert set(run.tags) == {"trial_id:aaaa1_00000", "git_sha:0123abcd"}
    flat = trial_cfg(wb.base, t.config).flat()
    assert {k: run.config[k] for k in flat} == flat  # the resolved config, not Ray's
    assert run.config["kd.alpha"] == 0.3 and "train.epochs" in run.config
    kd = run.config["kdtune"]
    assert (kd["trial_id"], kd["sweep"], kd["git_sha"]) == ("aaaa1_00000", "unit", "0123abcd")
    assert logged_steps([run]) == [1, 2, 3] and logged_steps([run], "test_acc") == [3]
    logged = set().union(*(values for _, values in run.history))
    # Ray's keys, flags, text and NaN are not metrics
    assert not {"time_total_s", "training_iteration", "checkpoint_saved", "final", "phase",
                "node", "bad"} & logged
    assert run.summary["test_acc"] == 0.42 and run.summary["size_mb_dense"] == 1.25
    assert run.exit_code == 0 and not run.preempting
    assert ledger(wb) == {t.trial_id: {"run_id": run.id, "status": "FINISHED", "step": 3,
                                       "measured": {"size_mb_dense": 1.25}}}
    assert not (wb.cwd / "wandb").exists()  # in the run folder, not the cwd's


def test_wandb_resumed_process_continues_the_same_runs_without_repeated_steps(wb,
                                                                           monkeypatch):

    monkeypatch.setenv("WANDB_PROJECT", "shared")
    a = new_tracker(wb)
    running, interrupted, lost, errored, orphan = three_epochs_then_ctrl_c(a, 5)
    # `running` and `orphan` as after a kill -9: their files end there, nothing ended the runs
    for t in (running, orphan):
        a._live.pop(t.trial_id).finish()
    assert {tid: r["status"] for tid, r in ledger(wb).items()} == {
        running.trial_id: "RUNNING", interrupted.trial_id: "KILLED", lost.trial_id: "KILLED",
        errored.trial_id: "FAILED", orphan.trial_id: "RUNNING"}

    b = new_tracker(wb)  # the resumed process: a new callback, state only in the run folder
    fresh = [trial(running.trial_id, 0.2), trial(interrupted.trial_id, 0.3)]
    b.on_step_begin(iteration=0, trials=fresh)  # lost and orphan are no longer Tune's
    for t in fresh:
        b.on_trial_start(iteration=0, trials=fresh, trial=t)
        for epoch in (2, 3, 4):  # its last checkpoint was epoch 1: redoes 2 and 3
            report(b, t, epoch)
        complete(wb, b, t, epochs=5)

    runs = by_run_id(wb.dir)
    ids = {t.trial_id: wandb_run_id("unit", t.trial_id)
           for t in (running, interrupted, lost, errored, orphan)}
    assert set(runs) == set(ids.values())  # one run per trial id, none created on resuming
    assert {p.project for parts in runs.values() for p in parts} == {"shared"}  # WANDB_PROJECT
    for t in fresh:
        parts = runs[ids[t.trial_id]]
        assert len(parts) == 2 and parts[1].config.get("kd.alpha") is None  # set once
        assert logged_steps(parts) == logged_steps(parts, "epoch") == [1, 2, 3, 4, 5]
        assert parts[-1].exit_code == 0 and parts[-1].summary["test_acc"] == 0.42
    assert runs[ids[interrupted.trial_id]][0].preempting
    assert runs[ids[interrupted.trial_id]][0].exit_code == 1
    (part,) = runs[ids[lost.trial_id]]
    assert part.preempting and part.exit_code == 1
    (part,) = runs[ids[errored.trial_id]]
    assert part.exit_code == 1 and not part.preempting
    killed = runs[ids[orphan.trial_id]]  # reopened by the resumed process to end it
    assert len(killed) == 2 and killed[1].preempting and killed[1].exit_code == 1
    assert logged_steps(killed) == [1, 2, 3]
    assert {tid: (r["status"], r["step"]) for tid, r in ledger(wb).items()} == {
        running.trial_id: ("FINISHED", 5), interrupted.trial_id: ("FINISHED", 5),
        lost.trial_id: ("KILLED", 3), errored.trial_id: ("FAILED", 3),
        orphan.trial_id: ("KILLED", 3)}


def test_wandb_measured_latency_goes_into_the_summary_after_the_sweep(wb):

    tracker = new_tracker(wb)
    done, stopped = measured_after_the_sweep(wb, tracker)

    runs = by_run_id(wb.dir)
    first, after = runs[wandb_run_id("unit", done.trial_id)]  # the finished run, resumed once
    assert after.summary == {"latency_ms_b1_cpu": 1.5, "throughput_ips_cpu": 900.0,
                             "flops": 1e6} | {k: v for k, v in after.summary.items()
                                              if k.startswith("_")}
    assert after.history == [] and after.exit_code == 0  # val_acc is the trial's: not touched
    assert first.summary["val_acc"] == pytest.approx(0.3)
    (part,) = runs[wandb_run_id("unit", stopped.trial_id)]
    assert part.exit_code == 0 and "latency_ms_b1_cpu" not in part.summary
    log_measured([new_tracker(wb)], wb.dir)  # a resumed sweep that had nothing left to run
    assert len(by_run_id(wb.dir)[wandb_run_id("unit", done.trial_id)]) == 2  # nothing new


def test_wandb_unreachable_server_is_one_warning_and_quick(wb, monkeypatch, capsys):
    port = closed_port()
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789" * 4)  # never sent: nothing answers
    pd.DataFrame([{"trial_id": "dddd1_00000", "status": "completed",
                   "latency_ms_b1_cpu": 1.0}]).to_parquet(wb.dir / "trials.parquet")
    t0 = time.time()
    tracker = new_tracker(wb, quiet=False)
    drive(tracker, wb)
    assert time.time() - t0 < 30  # W&B's own init waits 90 s
    out, err = capsys.readouterr()
    warnings = [ln for ln in err.splitlines() if "W&B" in ln or "wandb" in ln]
    assert warnings == [f"warning: W&B at http://127.0.0.1:{port}: unreachable (Connection "
                        "refused); the sweep goes on without W&B logging"], err
    assert "W&B: a run per trial" not in out and tracker.disabled
    assert not (wb.dir / "wandb").exists()


def test_wandb_without_api_key_is_one_warning_not_a_prompt(wb, monkeypatch, capsys):
    with dropping_server() as port:
        monkeypatch.setenv("WANDB_MODE", "online")
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        tracker = new_tracker(wb)
        drive(tracker, wb)
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if "W&B" in ln or "wandb" in ln]
    assert len(warnings) == 1 and "no API key" in warnings[0], err
    assert tracker.disabled


def test_wandb_server_that_fails_every_request_is_one_warning_then_off(wb, monkeypatch, capsys):
    """The probe passes, W&B's first request never gets an answer: init gives up after the
    tracker's timeout (shortened here), the other calls are not tried."""
    monkeypatch.setattr(trackers, "WANDB_INIT_TIMEOUT_S", 5.0)
    tracker, warnings, err = drive_against_a_dropping_server(
        wb, monkeypatch, capsys, "warning: W&B",
        lambda port: {"WANDB_MODE": "online", "WANDB_BASE_URL": f"http://127.0.0.1:{port}",
                      "WANDB_API_KEY": "0123456789" * 4})
    assert len(warnings) == 1 and "starting the run of trial dddd1_00000 failed" in \
        warnings[0], err
    assert tracker.disabled


def test_wandb_disabled_mode_logs_nothing_and_says_so(wb, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tracker = new_tracker(wb, quiet=False)
    drive(tracker, wb)
    out, err = capsys.readouterr()
    assert "W&B: WANDB_MODE=disabled, no runs are logged" in out and "W&B" not in err
    assert not (wb.dir / "wandb").exists()


def test_wandb_tracker_survives_tunes_pickle_of_the_run_config(wb):
    import ray.cloudpickle as pickle

    tracker = new_tracker(wb)
    t = trial("eeee1_00000")
    tracker.on_trial_start(iteration=0, trials=[t], trial=t)
    copy = pickle.loads(pickle.dumps(tracker))  # tuner.pkl: no W&B run or settings objects
    assert copy._settings is None and not copy.connected and copy._live == {}
    report(tracker, t, 1)
    tracker.on_trial_complete(iteration=1, trials=[t], trial=t)
    copy.setup()
    assert copy.runs == {t.trial_id: wandb_run_id("unit", t.trial_id)}  # from the run folder
    assert logged_steps(by_run_id(wb.dir)[wandb_run_id("unit", t.trial_id)]) == [1]


def test_wandb_missing_is_one_line_at_sweep_start(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    space = write_space(tmp_path, log_to=("mlflow", "wandb"))
    with pytest.raises(KDTuneError) as e:
        check_trackers(load_sweep_config(space))
    assert str(e.value) == WANDB_MISSING
    assert WANDB_MISSING == ("search.log_to: wandb needs the wandb package: "
                             "pip install 'kdtune[wandb]'")
    out = tmp_path / "run"
    assert main(["sweep", str(space), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kdtune: error: {WANDB_MISSING}"]
    assert not out.exists()


def test_tracker_classes_share_the_trial_tracker():
    from ray.tune.logger import LoggerCallback

    assert issubclass(WandbTracker, trackers.TrialTracker)
    assert issubclass(MLflowTracker, trackers.TrialTracker)
    assert issubclass(WandbTracker, LoggerCallback)
