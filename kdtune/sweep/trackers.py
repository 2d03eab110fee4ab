"""Experiment trackers a sweep also logs to (`search.log_to`), as Ray Tune callbacks placed after
ResultsWriter: kdtune's own tables stay the record; a tracker is a second view of them that the
sweep never waits on or fails for.

Both trackers share :class:`TrialTracker`: one run per trial, named after the trial; every call
to the tracker's library goes through `_safe`, whose first failure prints one warning line and
turns the tracker off for the rest of the sweep; each epoch is logged once at step = its epoch
even when a resumed trial redoes the epochs after its last checkpoint (the values logged first
are kept); runs end finished (completed, or stopped by ASHA) or failed (errored); Ctrl+C ends
the running trials' runs as killed, and the next --resume continues them, ends those a kill -9
left open whose trials Tune holds as ended, and kills those of trials Tune's snapshot lost (they
run again as new trials, with runs of their own); after the sweep `log_measured` adds the
re-measured latency, throughput and ONNX numbers to each completed trial's run.

MLflow (`log_to: [mlflow]`, :class:`MLflowTracker`): one MLflow run per trial in the experiment
named after the sweep (search.name), at MLFLOW_TRACKING_URI (MLflow's own default when unset).
It extends Ray's MLflowLoggerCallback, which logs Ray's raw trial config (with Tune's internal
keys), uses training_iteration as the step, can only upload the whole trial folder, creates a
second run when a sweep is resumed, and retries an unreachable server for minutes:

* params: the trial's resolved config (`trial_cfg(base, config).flat()`), in batches of 100
  (a resumed sweep adds those a kill cut short);
* metrics: every finite number of each epoch's report at step = its epoch, the final report
  (test_acc, sparsity, sizes) at the last epoch, and the measured numbers at that step too, so
  the run list shows them;
* the only artifact: the completed student's checkpoint (checkpoints/<trial id>.pt, which
  ResultsWriter copies in its own on_trial_complete, called first);
* --resume finds a trial's run by its tags (trial_id, sweep), and its last logged step by its
  `epoch` metric. Run statuses: FINISHED, FAILED, KILLED; --resume sets KILLED ones RUNNING.

An unreachable server costs one warning line: an http(s) URI is probed with a 3 s TCP connect at
setup, MLflow's HTTP retries (7 by default, with exponential backoff: minutes per call) are cut
to 1 retry and a 10 s timeout unless the user set them. Measured on a busy 2-core CPU with a
SQLite store on local disk: 12 ms median (26 ms p90) of the driver's time per trial epoch (one
log_batch), 56 ms per new run (create + ~100 params); a closed port is given up on at once
(connection refused), a silent host after the 3 s probe.

Weights & Biases (`log_to: [wandb]`, :class:`WandbTracker`): one W&B run per trial, in group
search.name of project WANDB_PROJECT (search.name when unset), its files under <run folder>/wandb;
WANDB_MODE=offline writes them there only (`wandb sync` uploads them later), disabled logs
nothing. Ray's WandbLoggerCallback does not fit: it starts two Ray actors (processes) per trial
and logs from there, so the driver never learns that W&B failed or hangs (each actor waits out
W&B's 90 s init timeout on its own), it logs at step = training_iteration and Ray's raw config,
its run id is the bare trial id with resume=False (a resumed sweep collides with its own runs),
and it writes into Tune's trial folders. This tracker calls W&B in the driver instead, as the
MLflow one does: `wandb.init(reinit="create_new")` per trial (several runs open in one process,
all served by the one wandb-core process W&B starts), `run.log` per epoch, `run.finish`:

* run id `kdtune-<8 hex of sha1(sweep name)>-<trial id>` and name `<sweep>-<trial id>`, both
  stable, so --resume continues the same run (resume="allow") instead of creating another;
* config: the resolved trial config (`trial_cfg(base, config).flat()`) with a `kdtune` section
  (trial_id, sweep, git_sha, ...); tags trial_id:<id> and git_sha:<sha>; set when a run is
  created (a resumed process does not resend them);
* history: every finite number of each epoch's report at step = its epoch (W&B steps only go
  up); summary: the final report's numbers, and after the sweep the measured ones (a finished
  run is resumed for that, once per completed trial whose measured numbers are new);
* no artifact (the checkpoints stay in the run folder);
* W&B keeps no run state that an offline process could read back, so the tracker keeps its own
  in <run folder>/wandb/kdtune-runs.json (trial id -> run id, status, last logged step, the
  measured numbers in its summary), rewritten after each change (before the run.log of a step):
  with the run folder, it is what --resume continues from.
* a kill -9 of the sweep: wandb-core, W&B's process, ends with it without writing what it
  holds; each epoch's row is committed at once and the run file flushed every 0.2 s (W&B:
  15 s, and a row only when the next step comes), so what is lost is the steps of the last
  0.2 s, which --resume does not log again (the ledger has them: no step is logged twice). A
  trial that ended in that window still gets its final numbers into the summary on --resume.
* W&B's console capture (the driver's stdout would land in every open run), system metrics (of
  the driver's machine, not the trial's) and code saving are off; so is W&B's own output: the
  tracker prints one line saying where runs go.

A W&B server that is unreachable costs one warning line: online, its host is probed with a 3 s
TCP connect and the API key is looked up without a prompt at setup (no key: a warning, not
W&B's interactive login), `wandb.init` gives up after 20 s (W&B: 90 s), `run.finish` after 30 s
of uploading (W&B: no limit; the data stays on disk for `wandb sync`). Measured on a busy 2-core
CPU, offline: 0.2 s to connect, 1.6 s for the first run of a process (wandb-core starting),
0.2 s for each later one, 1 ms of the driver's time per trial epoch (run.log and the ledger),
10 ms per run.finish, 0.2 s per completed trial after the sweep (its run resumed for the
measured numbers). A closed port is given up on at once (connection refused), a silent host
after the 3 s probe, a server that accepts and never answers after the 20 s init timeout.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import os
import re
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
from ray.tune.logger import LoggerCallback  # noqa: E402

MLFLOW_MISSING = "search.log_to: mlflow needs the mlflow package: pip install 'kdtune[mlflow]'"
WANDB_MISSING = "search.log_to: wandb needs the wandb package: pip install 'kdtune[wandb]'"
MISSING = {"mlflow": MLFLOW_MISSING, "wandb": WANDB_MISSING}  # log_to target -> its package's

# MLflow's HTTP client defaults (7 retries with backoff 2, 120 s timeout) stall a call for
# minutes on a server that is down; these apply unless the user exported their own.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_TIMEOUT_S = 3.0
# W&B's limits on a server that answers the probe but not W&B's requests (W&B: 90 s for init,
# no limit for finish); both end in an exception, so the tracker's one warning
WANDB_INIT_TIMEOUT_S, WANDB_FINISH_TIMEOUT_S = 20.0, 30.0
WANDB_FLUSH_S = 0.2  # how often W&B writes a run's file (see WandbTracker._connect)

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
# a run's status as the trackers keep it (MLflow's RunStatus names)
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"


def check_trackers(sw: SweepConfig) -> None:
    """search.log_to's packages, checked when the sweep starts, not after its teachers."""
    for target in sw.search.log_to:
        try:
            importlib.import_module(target)
        except ImportError:
            raise KDTuneError(MISSING[target]) from None


def make_trackers(sw: SweepConfig, store: RunStore, base: dict, prov: dict,
                  quiet: bool = False) -> list[tune.Callback]:
    """The callbacks of search.log_to, connected (each prints where its runs go); to be placed
    after ResultsWriter in the run config's callbacks."""
    check_trackers(sw)
    out = []
    for target in sw.search.log_to:
        tracker = TRACKERS[target](sw, store, base, prov, quiet=quiet)
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


def _is_measured(column: str) -> bool:
    return column.startswith(MEASURED_PREFIXES) or column in MEASURED_COLUMNS


def report_values(result: dict) -> dict[str, float]:
    """The metrics of a trial's report: its finite numbers, less Tune's bookkeeping."""
    values = {k: _number(v) for k, v in result.items() if k not in _RAY_KEYS}
    return {k: v for k, v in values.items() if v is not None}


def measured_values(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """trial id -> the finite measured columns of trials.parquet, for each completed trial."""
    if df.empty or "status" not in df:
        return {}
    cols = [c for c in df.columns if _is_measured(c)]
    out = {}
    for _, row in df[df["status"] == "completed"].iterrows():
        values = {c: _number(row[c]) for c in cols}
        out[row["trial_id"]] = {k: v for k, v in values.items() if v is not None}
    return out


def probe(url: str) -> str | None:
    """Why an http(s) URL's host does not accept a TCP connection within PROBE_TIMEOUT_S, or
    None when it does (or the URL is not http(s): nothing to probe)."""
    u = urlparse(url)
    if u.scheme not in ("http", "https"):
        return None
    try:
        socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)),
                                 timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"unreachable ({e.strerror or type(e).__name__})"
    return None


class TrialTracker(LoggerCallback):
    """What the trackers share (see the module docstring). A subclass connects (`connect`),
    opens a trial's run (`_open`), logs one step (`_log_step`), ends a run (`_close`, `_kill`)
    and adds the measured numbers (`_measured`); `_state_changed` follows each change of
    runs/status/logged."""

    label = ""  # how the tracker's lines name it: "MLflow", "W&B"
    _unpickled = ("runs", "status", "logged")  # rebuilt by a copy's connect

    def __init__(self, sw: SweepConfig, store: RunStore, base: dict, prov: dict,
                 quiet: bool = False):
        self.sw, self.base, self.prov, self.quiet = sw, base, prov, quiet
        self.sweep = sw.search.name
        self.run_dir = Path(store.local)
        self.where = str(store)
        self.disabled = False
        self.connected = False
        self._reset_runs()

    def _reset_runs(self):
        self.runs: dict[str, str] = {}  # trial id -> its run's id
        self.status: dict[str, str] = {}  # trial id -> the run's status as last set/seen
        self.logged: dict[str, int] = {}  # trial id -> last epoch (step) logged to its run
        self.reconciled = False

    # Tune pickles the run config (tuner.pkl) before the sweep starts: connections stay out; a
    # copy connects again in setup
    def __getstate__(self):
        state = self.__dict__.copy()
        for k in self._unpickled:
            state.pop(k, None)
        state["connected"] = False
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        for k in self._unpickled:
            setattr(self, k, None)
        self._reset_runs()

    def connect(self) -> None:
        raise NotImplementedError

    def setup(self, *args, **kwargs):  # Tune calls it when fit() starts
        self.connect()

    def _target(self) -> str:
        """Where the runs go, for the warning line."""
        raise NotImplementedError

    def _warn(self, what: str) -> None:
        self.disabled = True
        print(f"warning: {self.label} at {self._target()}: {what}; the sweep goes on without "
              f"{self.label} logging", file=sys.stderr, flush=True)

    def _safe(self, what: str, fn, *args, **kwargs):
        if self.disabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a tracker never fails the sweep
            lines = str(e).strip().splitlines()
            self._warn(f"{what} failed ({type(e).__name__}: {(lines or [''])[0][:200]})")
            return None

    def _state_changed(self) -> None:
        """After runs/status/logged changed: a tracker whose server does not keep them saves
        them here."""

    def _tags(self, trial) -> dict:
        """What identifies a trial's run, as text: MLflow's tags, W&B's config section."""
        cfg = trial_cfg(self.base, trial.config)
        return {"trial_id": trial.trial_id, "sweep": self.sweep,
                "git_sha": self.prov.get("git_sha") or "unknown",
                "is_baseline": str(bool(trial.config.get(BASELINE_KEY))).lower(),
                "seed": str(cfg.seed), "student_arch": cfg.student.arch,
                "kd_method": cfg.kd.method if cfg.kd.alpha > 0 else "none",
                "run_folder": self.where, "kdtune_version": str(self.prov.get("kdtune_version"))}

    # -- runs -------------------------------------------------------------------------------

    def _result(self, trial, result: dict) -> None:
        epoch = result.get("epoch")
        if epoch is None:
            return
        epoch = int(epoch)
        handle = self._open(trial)
        if epoch <= self.logged.get(trial.trial_id, 0):
            return  # redone after a resume or a restart: that step is logged already
        values = report_values(result)
        values["epoch"] = float(epoch)  # also how a resumed MLflow sweep finds the last step
        # saved first: a process killed between the two leaves this step out of the tracker
        # (kdtune's tables have it), never logs it twice
        self.logged[trial.trial_id] = epoch
        self._state_changed()
        self._log_step(handle, values, epoch)

    def _end(self, trial, status: str) -> None:
        tid = trial.trial_id
        if tid not in self.runs and trial.last_result is None:
            return  # never reported: no run to end
        handle = self._open(trial)
        if trial.last_result:
            self._result(trial, trial.last_result)  # the final report, if not logged yet
        self._close(trial, handle, status)
        self.status[tid] = status
        self._state_changed()

    def _end_killed(self, tid: str) -> None:
        self._kill(tid)
        self.status[tid] = KILLED
        self._state_changed()

    # -- Tune events (LoggerCallback routes on_trial_* here) --------------------------------

    def log_trial_start(self, trial):
        self._safe("starting the run of trial " + trial.trial_id, self._open, trial)

    def log_trial_result(self, iteration, trial, result):
        self._safe("logging a result of trial " + trial.trial_id, self._result, trial, result)

    def log_trial_end(self, trial, failed: bool = False):
        self._safe("ending the run of trial " + trial.trial_id, self._end, trial,
                   FAILED if failed else FINISHED)

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
        for tid in [t for t, s in self.status.items() if s in (RUNNING, KILLED)]:
            t = by_id.get(tid)
            if t is None:
                if self.status[tid] != KILLED:
                    self._end_killed(tid)
            elif t.status == TERMINATED:
                self._end(t, FINISHED)
            elif t.status == ERROR:
                self._end(t, FAILED)

    def on_experiment_end(self, trials, **info):
        """Ctrl+C stops the running trials without on_trial_complete: their runs are KILLED
        (--resume continues them)."""
        def kill():
            for t in trials:
                if self.status.get(t.trial_id) == RUNNING:
                    self._end_killed(t.trial_id)
        self._safe("ending the interrupted runs", kill)

    # -- after the sweep --------------------------------------------------------------------

    def log_measured(self, df: pd.DataFrame) -> None:
        """measure_all's columns of trials.parquet into each completed trial's run; a value the
        run already has is not logged again."""
        if self.disabled or not self.connected:
            return
        self._safe("logging the measured latency and sizes", self._measured,
                   measured_values(df))

    # -- what each tracker does its own way --------------------------------------------------

    def _open(self, trial):
        """The trial's run (its id, or an open run object): this process's, the sweep's earlier
        one (resumed), or a new one."""
        raise NotImplementedError

    def _log_step(self, handle, values: dict, step: int) -> None:
        raise NotImplementedError

    def _close(self, trial, handle, status: str) -> None:
        raise NotImplementedError

    def _kill(self, tid: str) -> None:
        raise NotImplementedError

    def _measured(self, values: dict[str, dict[str, float]]) -> None:
        raise NotImplementedError


class MLflowTracker(TrialTracker, MLflowLoggerCallback):
    """One MLflow run per trial (see the module docstring)."""

    label = "MLflow"
    # an SQLAlchemy engine, an HTTP session; what the earlier process's runs hold
    _unpickled = TrialTracker._unpickled + ("_client", "params_have")

    def __init__(self, sw: SweepConfig, store: RunStore, base: dict, prov: dict,
                 quiet: bool = False):
        MLflowLoggerCallback.__init__(self, tracking_uri=None, experiment_name=sw.search.name)
        TrialTracker.__init__(self, sw, store, base, prov, quiet=quiet)
        self.uri: str | None = None
        self._client = None
        self.experiment_id: str | None = None

    def _reset_runs(self):
        super()._reset_runs()
        # trial id -> the param keys its run from an earlier process holds, until its config is
        # checked: a kill -9 between create_run and log_batch left a run with none (found by the
        # fresh-clone CI's kill/resume sweep)
        self.params_have: dict[str, set[str]] = {}

    # -- connection -------------------------------------------------------------------------

    def _target(self) -> str:
        return redact_url(self.uri)

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
        if urlparse(self.uri).scheme in ("http", "https"):
            for k, v in HTTP_DEFAULTS.items():
                os.environ.setdefault(k, v)
            why = probe(self.uri)
            if why:
                self._warn(why)
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
        self.params_have[tid] = set(run.data.params)

    # -- runs -------------------------------------------------------------------------------

    def _tags(self, trial) -> dict:
        tags = super()._tags(trial)
        sha = self.prov.get("git_sha")
        if sha:
            tags["mlflow.source.git.commit"] = sha.removesuffix("-dirty")
        return tags

    def _open(self, trial) -> str:
        tid = trial.trial_id
        if tid in self.runs:
            if tid in self.params_have:  # the earlier process's run: its params may be cut short
                self._log_params(trial, self.runs[tid], self.params_have.pop(tid))
            if self.status.get(tid) != RUNNING:  # continued after Ctrl+C, a kill or an error
                self._client.update_run(self.runs[tid], status=RUNNING)
                self.status[tid] = RUNNING
            return self.runs[tid]
        run = self._client.create_run(self.experiment_id, run_name=tid, tags=self._tags(trial))
        self._log_params(trial, run.info.run_id)
        self.runs[tid], self.status[tid], self.logged[tid] = run.info.run_id, RUNNING, 0
        return run.info.run_id

    def _log_params(self, trial, run_id: str, have: set[str] = frozenset()) -> None:
        """The resolved config as params, those the run lacks (MLflow refuses to change one)."""
        from mlflow.entities import Param

        params = [Param(k, _param(v)) for k, v in trial_cfg(self.base, trial.config).flat().items()
                  if k not in have]
        for i in range(0, len(params), PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=params[i:i + PARAMS_PER_BATCH])

    def _log_step(self, run_id: str, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_BATCH])

    def _close(self, trial, run_id: str, status: str) -> None:
        ckpt = self.run_dir / "checkpoints" / f"{trial.trial_id}.pt"
        if status == FINISHED and (trial.last_result or {}).get("final") and ckpt.is_file():
            have = [a.path for a in self._client.list_artifacts(run_id, "checkpoint")]
            if f"checkpoint/{ckpt.name}" not in have:
                self._client.log_artifact(run_id, str(ckpt), "checkpoint")
        self._client.set_terminated(run_id, status=status)

    def _kill(self, tid: str) -> None:
        self._client.set_terminated(self.runs[tid], status=KILLED)

    # -- after the sweep --------------------------------------------------------------------

    def _measured(self, values: dict[str, dict[str, float]]) -> None:
        """At the run's last epoch's step, so the run list shows them."""
        if self._client is None or not values:
            return
        runs = {}
        for r in self._sweep_runs():  # oldest first: a trial id's first run is its run
            runs.setdefault(r.data.tags.get("trial_id"), r)
        for tid, measured in values.items():
            run = runs.get(tid)
            if run is None:
                continue
            have = run.data.metrics
            new = {k: v for k, v in measured.items() if have.get(k) != v}
            if new:
                self._log_step(run.info.run_id, new, int(have.get("epoch", 0) or 0))


def wandb_run_id(sweep: str, tid: str) -> str:
    """A trial's W&B run id: stable across resumes, distinct between sweeps of one project
    (Tune's trial ids repeat their experiment's short prefix, not the sweep name), made of the
    characters W&B takes in an id."""
    digest = hashlib.sha1(sweep.encode()).hexdigest()[:8]
    return f"kdtune-{digest}-{re.sub(r'[^A-Za-z0-9_-]', '-', tid)}"


def _wandb_project(name: str) -> str:
    """A sweep name as a W&B project name (which cannot hold / \\ # ? % :, at most 128)."""
    return re.sub(r"[/\\#?%:]", "-", name)[:128]


class WandbTracker(TrialTracker):
    """One W&B run per trial, logged from the driver (see the module docstring)."""

    label = "W&B"
    # wandb Run objects and Settings stay out of tuner.pkl
    _unpickled = TrialTracker._unpickled + ("_live", "_settings", "measured")
    LEDGER = "kdtune-runs.json"  # in <run folder>/wandb: what W&B offline cannot tell us

    def __init__(self, sw: SweepConfig, store: RunStore, base: dict, prov: dict,
                 quiet: bool = False):
        super().__init__(sw, store, base, prov, quiet=quiet)
        self.mode = "online"
        self.uri: str | None = None
        self.project: str | None = None
        self._settings = None

    def _reset_runs(self):
        super()._reset_runs()
        self._live: dict = {}  # trial id -> its wandb Run, while open in this process
        self.measured: dict[str, dict[str, float]] = {}  # trial id -> measured numbers logged

    @property
    def ledger(self) -> Path:
        return self.run_dir / "wandb" / self.LEDGER

    # -- connection -------------------------------------------------------------------------

    def _target(self) -> str:
        if self.mode == "online":
            return redact_url(self.uri)
        return str(self.run_dir / "wandb")

    def connect(self) -> None:
        """W&B's mode, server and project (as W&B resolves them: WANDB_MODE, WANDB_BASE_URL,
        WANDB_PROJECT, `wandb offline`'s settings file), reachability and an API key when
        online, the runs of an earlier process of this sweep; prints one line saying where
        runs go."""
        if self.connected or self.disabled:
            return
        self.connected = True
        self._safe("setup", self._connect)
        if self.disabled or self.quiet:
            return
        where = f"a run per trial in group '{self.sweep}' of project '{self.project}'"
        if self.mode == "online":
            print(f"W&B: {where} at {redact_url(self.uri)}", flush=True)
        else:
            folder = self.run_dir / "wandb"
            print(f"W&B: {where}, offline in {folder} (upload: wandb sync "
                  f"{folder}/offline-run-*)", flush=True)

    def _connect(self) -> None:
        import wandb

        # silent: W&B's own lines (login, sync hints) would repeat for every trial; this
        # tracker prints where runs go, and its warnings
        settings = wandb.setup(settings=wandb.Settings(silent=True)).settings
        self.uri = settings.base_url
        self.project = settings.project or _wandb_project(self.sweep)
        self.mode = {"disabled": "disabled", "offline": "offline",
                     "dryrun": "offline"}.get(settings.mode, "online")
        if self.mode == "disabled":
            self.disabled = True
            if not self.quiet:
                print("W&B: WANDB_MODE=disabled, no runs are logged", flush=True)
            return
        if self.mode == "online":
            why = probe(self.uri)
            if why:
                self._warn(why)
                return
            # without a key W&B's init asks for one on a terminal, and waits
            if not wandb.login(prompt=False, verify=False):
                self._warn("no API key (run `wandb login` or set WANDB_API_KEY; "
                           "WANDB_MODE=offline logs to files instead)")
                return
        wanted = {"init_timeout": WANDB_INIT_TIMEOUT_S, "finish_timeout": WANDB_FINISH_TIMEOUT_S,
                  "finish_timeout_raises": True, "silent": True, "console": "off",
                  "x_disable_stats": True, "save_code": False,
                  # wandb-core dies with a killed driver without writing what it holds: W&B
                  # flushes the run file every 15 s (measured: a kill -9 3 s after 3 steps left
                  # the file empty); every 0.2 s here, no measurable cost
                  "x_transaction_log_flush_interval": WANDB_FLUSH_S}
        # the finish limit and the flush interval are not in every W&B >= 0.19.10
        known = wandb.Settings.model_fields
        self._settings = wandb.Settings(**{k: v for k, v in wanted.items() if k in known})
        self._load_ledger()

    def _load_ledger(self) -> None:
        try:
            saved = json.loads(self.ledger.read_text())
        except FileNotFoundError:
            return
        for tid, run in saved.get("runs", {}).items():
            self.runs[tid], self.status[tid] = run["run_id"], run["status"]
            self.logged[tid] = int(run["step"])
            self.measured[tid] = run.get("measured", {})

    def _state_changed(self) -> None:
        runs = {tid: {"run_id": rid, "status": self.status.get(tid, RUNNING),
                      "step": self.logged.get(tid, 0), "measured": self.measured.get(tid, {})}
                for tid, rid in self.runs.items()}
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.ledger.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sweep": self.sweep, "runs": runs}, indent=1))
        os.replace(tmp, self.ledger)  # a kill mid-write leaves the previous ledger whole

    # -- runs -------------------------------------------------------------------------------

    def _init(self, tid: str, trial=None):
        """wandb.init of a trial's run: with its config and tags when `trial` is given (a new
        run), else resumed as it is."""
        import wandb

        extra = {}
        if trial is not None:
            sha = self.prov.get("git_sha") or "unknown"
            extra = {"config": {**trial_cfg(self.base, trial.config).flat(),
                                "kdtune": self._tags(trial)},
                     "tags": [f"trial_id:{tid}"[:64], f"git_sha:{sha}"[:64]]}
        return wandb.init(project=self.project, group=self.sweep, job_type="trial",
                          id=wandb_run_id(self.sweep, tid), name=f"{self.sweep}-{tid}",
                          dir=str(self.run_dir), resume="allow", reinit="create_new",
                          settings=self._settings, **extra)

    def _open(self, trial):
        tid = trial.trial_id
        run = self._live.get(tid)
        if run is not None:
            return run
        run = self._init(tid, None if tid in self.runs else trial)
        self._live[tid] = run
        self.runs[tid], self.status[tid] = run.id, RUNNING
        self.logged.setdefault(tid, 0)
        self._state_changed()
        return run

    def _log_step(self, run, values: dict, step: int) -> None:
        # commit: W&B would hold the row until a later step or the finish, and a killed
        # process's last epoch would be lost; online, each epoch shows as it ends
        run.log(values, step=step, commit=True)

    def _finish(self, tid: str, exit_code: int) -> None:
        run = self._live.pop(tid)
        run.finish(exit_code=exit_code)

    def _close(self, trial, run, status: str) -> None:
        result = trial.last_result or {}
        if status == FINISHED and result.get("final"):
            finals = report_values(result)
            run.summary.update(finals)  # also when its step was logged by an earlier process
            self.measured[trial.trial_id] = {k: v for k, v in finals.items() if _is_measured(k)}
        self._finish(trial.trial_id, 0 if status == FINISHED else 1)

    def _kill(self, tid: str) -> None:
        if tid not in self._live:  # left open by a killed process
            self._live[tid] = self._init(tid)
        self._live[tid].mark_preempting()  # W&B's word for a run that is to be resumed
        self._finish(tid, 1)

    # -- after the sweep --------------------------------------------------------------------

    def _measured(self, values: dict[str, dict[str, float]]) -> None:
        """Into the run's summary: the finished run is resumed for that, once per trial whose
        measured numbers are not all there yet."""
        self._load_ledger()  # as the Tune callback that logged the trials left it
        for tid, measured in values.items():
            if tid not in self.runs:
                continue
            have = self.measured.get(tid, {})
            new = {k: v for k, v in measured.items() if have.get(k) != v}
            if not new:
                continue
            run = self._live.get(tid) or self._init(tid)
            self._live[tid] = run
            run.summary.update(new)
            self._finish(tid, 0)
            self.measured[tid] = {**have, **new}
            self._state_changed()


TRACKERS = {"mlflow": MLflowTracker, "wandb": WandbTracker}  # search.log_to target -> class
