"""Experiment trackers a sweep also logs to (`search.log_to`), as Ray Tune callbacks placed after
ResultsWriter: kdtune's own tables stay the record; a tracker is a second view of them that the
sweep never waits on or fails for.

MLflow (`log_to: [mlflow]`, :class:`MLflowTracker`): one MLflow run per trial in the experiment
named after the sweep (search.name), at MLFLOW_TRACKING_URI (MLflow's own default when unset).
It extends Ray's MLflowLoggerCallback, which logs Ray's raw trial config (with Tune's internal
keys), uses training_iteration as the step, can only upload the whole trial folder, creates a
second run when a sweep is resumed, and retries an unreachable server for minutes:

* params: the trial's resolved config (`trial_cfg(base, config).flat()`), in batches of 100;
* metrics: every finite number of each epoch's report at step = its epoch, the final report
  (test_acc, sparsity, sizes) at the last epoch, and after the sweep the re-measured latency,
  throughput and ONNX numbers (`log_measured`) at that step too, so the run list shows them;
* the only artifact: the completed student's checkpoint (checkpoints/<trial id>.pt, which
  ResultsWriter copies in its own on_trial_complete, called first);
* --resume continues the same runs: a trial's run is found by its tags (trial_id, sweep) and
  no epoch step is logged twice (a resumed trial redoes the epochs after its last checkpoint;
  the values logged first are kept). Runs end FINISHED (completed or stopped by ASHA) or FAILED
  (errored); Ctrl+C marks the running trials' runs KILLED and --resume sets them back to
  RUNNING; after a kill -9 they stay RUNNING until --resume continues them, or marks KILLED
  those of trials Tune's snapshot lost (they run again as new trials, with runs of their own).

An unreachable server costs one warning line: an http(s) URI is probed with a 3 s TCP connect at
setup, MLflow's HTTP retries (7 by default, with exponential backoff: minutes per call) are cut
to 1 retry and a 10 s timeout unless the user set them, and any MLflow error disables the tracker
for the rest of the sweep. Measured on a busy 2-core CPU with a SQLite store on local disk: 12 ms
median (26 ms p90) of the driver's time per trial epoch (one log_batch), 56 ms per new run
(create + ~100 params); a closed port is given up on at once (connection refused), a silent
host after the 3 s probe.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from ..config import SweepConfig, redact_url
from ..errors import KDTuneError
from ..storage import RunStore
from ._ray import tune  # noqa: F401  (Ray's environment before ray.air is imported)
from .plan import BASELINE_KEY, trial_cfg
from .writer import _RAY_KEYS

from ray.air.integrations.mlflow import MLflowLoggerCallback  # noqa: E402

MLFLOW_MISSING = "search.log_to: mlflow needs the mlflow package: pip install 'kdtune[mlflow]'"

# MLflow's HTTP client defaults (7 retries with backoff 2, 120 s timeout) stall a call for
# minutes on a server that is down; these apply unless the user exported their own.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_TIMEOUT_S = 3.0

# MLflow's limits (mlflow.utils.validation): a batch holds at most 100 params and 1000 metrics,
# a param value at most 6000 characters
PARAMS_PER_BATCH, METRICS_PER_BATCH, MAX_PARAM_CHARS = 100, 1000, 6000

# trials.parquet columns measure_all (kdtune.sweep.run) fills after the sweep, and the sizes a
# trial reports, which log_measured copies to each completed trial's run
MEASURED_PREFIXES = ("latency_", "throughput_", "size_mb_", "val_acc_onnx", "test_acc_onnx",
                     "test_agree_onnx")
MEASURED_COLUMNS = ("params", "nonzero_params", "flops", "cpu_threads", "latency_shared_by")

# Tune's trial status strings (ray.tune.experiment.Trial)
TERMINATED, ERROR = "TERMINATED", "ERROR"


def check_trackers(sw: SweepConfig) -> None:
    """search.log_to's packages, checked when the sweep starts, not after its teachers."""
    if "mlflow" in sw.search.log_to:
        try:
            importlib.import_module("mlflow")
        except ImportError:
            raise KDTuneError(MLFLOW_MISSING) from None


def make_trackers(sw: SweepConfig, store: RunStore, base: dict, prov: dict,
                  quiet: bool = False) -> list[tune.Callback]:
    """The callbacks of search.log_to, connected (each prints where its runs go); to be placed
    after ResultsWriter in the run config's callbacks."""
    check_trackers(sw)
    out = []
    if "mlflow" in sw.search.log_to:
        tracker = MLflowTracker(sw, store, base, prov, quiet=quiet)
        tracker.connect()
        out.append(tracker)
    return out


def log_measured(trackers: list, run_dir: Path) -> None:
    """After measure_all: each tracker copies the measured columns of trials.parquet."""
    path = Path(run_dir) / "trials.parquet"
    if not trackers or not path.is_file():
        return
    df = pd.read_parquet(path)
    for t in trackers:
        t.log_measured(df)


def _number(v) -> float | None:
    """A finite float of a metric value, or None (text, bool, None, NaN, inf)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:  # numpy scalars
            import numpy as np

            if not isinstance(v, np.number):
                return None
        except ImportError:
            return None
    v = float(v)
    return v if math.isfinite(v) else None


def _param(v) -> str:
    return ("null" if v is None else str(v))[:MAX_PARAM_CHARS]


class MLflowTracker(MLflowLoggerCallback):
    """One MLflow run per trial (see the module docstring). Every MLflow call goes through
    `_safe`: the first failure prints one warning and turns the tracker off."""

    def __init__(self, sw: SweepConfig, store: RunStore, base: dict, prov: dict,
                 quiet: bool = False):
        super().__init__(tracking_uri=None, experiment_name=sw.search.name)
        self.sw, self.base, self.prov, self.quiet = sw, base, prov, quiet
        self.sweep = sw.search.name
        self.run_dir = Path(store.local)
        self.where = str(store)
        self.disabled = False
        self.connected = False
        self.uri: str | None = None
        self._client = None
        self.experiment_id: str | None = None
        self._reset_runs()

    def _reset_runs(self):
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.status: dict[str, str] = {}  # trial id -> the run's status as last set/seen
        self.logged: dict[str, int] = {}  # trial id -> last epoch (step) logged to its run
        self.reconciled = False

    # Tune pickles the run config (tuner.pkl) before the sweep starts: the client (an SQLAlchemy
    # engine, an HTTP session) stays out; a copy connects again in setup
    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_client", "runs", "status", "logged"):
            state.pop(k, None)
        state["connected"] = False
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._client = None
        self._reset_runs()

    # -- connection -------------------------------------------------------------------------

    def _warn(self, what: str) -> None:
        self.disabled = True
        print(f"warning: MLflow at {redact_url(self.uri)}: {what}; the sweep goes on without "
              "MLflow logging", file=sys.stderr, flush=True)

    def _safe(self, what: str, fn, *args, **kwargs):
        if self.disabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a tracker never fails the sweep
            lines = str(e).strip().splitlines()
            self._warn(f"{what} failed ({type(e).__name__}: {(lines or [''])[0][:200]})")
            return None

    def connect(self) -> None:
        """Tracking URI, reachability, the experiment (created if missing), the sweep's runs
        already there (a resumed sweep's); prints one line saying where runs go."""
        if self.connected or self.disabled:
            return
        self.connected = True
        import mlflow

        # "Creating initial MLflow database tables..." and the like: the line below says where
        # runs go; MLflow's warnings still show
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.uri = mlflow.get_tracking_uri()  # MLFLOW_TRACKING_URI, or MLflow's default
        scheme = urlparse(self.uri).scheme
        if scheme in ("http", "https"):
            for k, v in HTTP_DEFAULTS.items():
                os.environ.setdefault(k, v)
            u = urlparse(self.uri)
            try:
                socket.create_connection((u.hostname, u.port or (443 if scheme == "https"
                                                                  else 80)),
                                         timeout=PROBE_TIMEOUT_S).close()
            except OSError as e:
                self._warn(f"unreachable ({e.strerror or type(e).__name__})")
                return
        self._safe("setup", self._connect, mlflow)
        if not self.disabled and not self.quiet:
            print(f"MLflow: a run per trial in experiment '{self.sweep}' at "
                  f"{redact_url(self.uri)}", flush=True)

    def _connect(self, mlflow) -> None:
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)
        exp = self._client.get_experiment_by_name(self.sweep)
        if exp is None:
            # a SQLite store's artifacts go beside its database, not into ./mlruns of whatever
            # folder the sweep was started from
            artifacts = None
            if self.uri.startswith("sqlite:///"):
                db = Path(self.uri[len("sqlite:///"):])
                artifacts = (db.parent / "mlartifacts").resolve().as_uri()
            self.experiment_id = self._client.create_experiment(
                self.sweep, artifact_location=artifacts)
        else:
            if exp.lifecycle_stage == "deleted":
                self._client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
        for run in self._sweep_runs():
            tid = run.data.tags.get("trial_id")
            if tid and tid not in self.runs:  # the oldest run of a trial id is its run
                self._remember(tid, run)

    def _sweep_runs(self) -> list:
        """This sweep's runs in the experiment, oldest first (the sweep tag is compared here,
        not in a filter string, which a name with a quote would break)."""
        out, token = [], None
        while True:
            page = self._client.search_runs([self.experiment_id], max_results=1000,
                                            order_by=["attributes.start_time ASC"],
                                            page_token=token)
            out.extend(r for r in page if r.data.tags.get("sweep") == self.sweep)
            token = page.token
            if not token:
                return out

    def _remember(self, tid: str, run) -> None:
        self.runs[tid] = run.info.run_id
        self.status[tid] = run.info.status
        self.logged[tid] = int(run.data.metrics.get("epoch", 0) or 0)

    def setup(self, *args, **kwargs):  # Tune calls it when fit() starts
        self.connect()

    # -- runs -------------------------------------------------------------------------------

    def _tags(self, trial) -> dict:
        cfg = trial_cfg(self.base, trial.config)
        sha = self.prov.get("git_sha")
        tags = {"trial_id": trial.trial_id, "sweep": self.sweep, "git_sha": sha or "unknown",
                "is_baseline": str(bool(trial.config.get(BASELINE_KEY))).lower(),
                "seed": str(cfg.seed), "student_arch": cfg.student.arch,
                "kd_method": cfg.kd.method if cfg.kd.alpha > 0 else "none",
                "run_folder": self.where, "kdtune_version": str(self.prov.get("kdtune_version"))}
        if sha:
            tags["mlflow.source.git.commit"] = sha.removesuffix("-dirty")
        return tags

    def _run_id(self, trial) -> str | None:
        """The trial's run: this process's, the sweep's earlier one (resumed), or a new one
        with its tags and params."""
        from mlflow.entities import Param

        tid = trial.trial_id
        if tid in self.runs:
            if self.status.get(tid) != "RUNNING":  # continued after Ctrl+C, a kill or an error
                self._client.update_run(self.runs[tid], status="RUNNING")
                self.status[tid] = "RUNNING"
            return self.runs[tid]
        run = self._client.create_run(self.experiment_id, run_name=tid, tags=self._tags(trial))
        params = [Param(k, _param(v))
                  for k, v in trial_cfg(self.base, trial.config).flat().items()]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self._client.log_batch(run.info.run_id, params=params[i:i + PARAMS_PER_BATCH])
        self.runs[tid], self.status[tid], self.logged[tid] = run.info.run_id, "RUNNING", 0
        return run.info.run_id

    def _log_step(self, run_id: str, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_BATCH])

    def _result(self, trial, result: dict) -> None:
        epoch = result.get("epoch")
        if epoch is None:
            return
        epoch = int(epoch)
        run_id = self._run_id(trial)
        if epoch <= self.logged.get(trial.trial_id, 0):
            return  # redone after a resume or a restart: that step is logged already
        values = {k: _number(v) for k, v in result.items() if k not in _RAY_KEYS}
        values = {k: v for k, v in values.items() if v is not None}
        values["epoch"] = float(epoch)  # also how a resumed sweep finds the last logged step
        self._log_step(run_id, values, epoch)
        self.logged[trial.trial_id] = epoch

    def _end(self, trial, status: str) -> None:
        tid = trial.trial_id
        if tid not in self.runs and trial.last_result is None:
            return  # never reported: no run to end
        run_id = self._run_id(trial)
        if trial.last_result:
            self._result(trial, trial.last_result)  # the final report, if not logged yet
        ckpt = self.run_dir / "checkpoints" / f"{tid}.pt"
        if status == "FINISHED" and (trial.last_result or {}).get("final") and ckpt.is_file():
            have = [a.path for a in self._client.list_artifacts(run_id, "checkpoint")]
            if f"checkpoint/{ckpt.name}" not in have:
                self._client.log_artifact(run_id, str(ckpt), "checkpoint")
        self._client.set_terminated(run_id, status=status)
        self.status[tid] = status

    # -- Tune events (LoggerCallback routes on_trial_* here) --------------------------------

    def log_trial_start(self, trial):
        self._safe("starting the run of trial " + trial.trial_id, self._run_id, trial)

    def log_trial_result(self, iteration, trial, result):
        self._safe("logging a result of trial " + trial.trial_id, self._result, trial, result)

    def log_trial_end(self, trial, failed: bool = False):
        self._safe("ending the run of trial " + trial.trial_id, self._end, trial,
                   "FAILED" if failed else "FINISHED")

    def on_step_begin(self, iteration, trials, **info):
        if not self.reconciled:
            self.reconciled = True
            self._safe("reconciling the resumed sweep's runs", self._reconcile, trials)

    def _reconcile(self, trials) -> None:
        """A resumed sweep: end the runs the last process left open. A trial Tune holds as
        finished gets its final metrics and status (the process died between Tune and this
        callback); one Tune no longer has (errored and now rerun as a new trial, or finished
        after its last snapshot and run again) is KILLED; the others continue."""
        by_id = {t.trial_id: t for t in trials}
        for tid in [t for t, s in self.status.items() if s in ("RUNNING", "KILLED")]:
            t = by_id.get(tid)
            if t is None:
                if self.status[tid] != "KILLED":
                    self._client.set_terminated(self.runs[tid], status="KILLED")
                    self.status[tid] = "KILLED"
            elif t.status == TERMINATED:
                self._end(t, "FINISHED")
            elif t.status == ERROR:
                self._end(t, "FAILED")

    def on_experiment_end(self, trials, **info):
        """Ctrl+C stops the running trials without on_trial_complete: their runs are KILLED
        (--resume sets them RUNNING again)."""
        def kill():
            for t in trials:
                if self.status.get(t.trial_id) == "RUNNING":
                    self._client.set_terminated(self.runs[t.trial_id], status="KILLED")
                    self.status[t.trial_id] = "KILLED"
        self._safe("ending the interrupted runs", kill)

    # -- after the sweep --------------------------------------------------------------------

    def log_measured(self, df: pd.DataFrame) -> None:
        """measure_all's columns of trials.parquet into each completed trial's run, at its last
        epoch's step; a value the run already has there is not logged again."""
        self._safe("logging the measured latency and sizes", self._measured, df)

    def _measured(self, df: pd.DataFrame) -> None:
        if self.disabled or self._client is None or df.empty or "status" not in df:
            return
        cols = [c for c in df.columns
                if c.startswith(MEASURED_PREFIXES) or c in MEASURED_COLUMNS]
        runs = {}
        for r in self._sweep_runs():  # oldest first: a trial id's first run is its run
            runs.setdefault(r.data.tags.get("trial_id"), r)
        for _, row in df[df["status"] == "completed"].iterrows():
            tid = row["trial_id"]
            run = runs.get(tid)
            if run is None:
                continue
            have = run.data.metrics
            values = {c: _number(row[c]) for c in cols}
            values = {k: v for k, v in values.items() if v is not None and have.get(k) != v}
            if values:
                self._log_step(run.info.run_id, values, int(have.get("epoch", 0) or 0))
