"""ResultsWriter, a Ray Tune callback: kdtune's tables of a sweep, written as trials report and
finish, the progress line, and a whole, consistent copy of Tune's snapshot for --resume.

    trials.parquet    a row per finished trial: status, flattened config, metrics, provenance
    epochs.parquet    per-epoch history of every trial
    asha_rungs.json   ASHA's rungs per student architecture (what each stop was judged against)
    checkpoints/      final student state_dicts of completed trials
    ray-snapshot.pkl  the last whole copy of Tune's snapshot (a kill can tear Tune's own files)
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import time
from pathlib import Path

import pandas as pd

from ..config import SweepConfig
from ..errors import KDTuneError
from ..models import model_family
from ..results import NUMERIC_METRIC_COLUMNS
from ..storage import RunStore, atomic_path
from ._ray import ray, tune
from .plan import BASELINE_KEY, GROUP_KEY, cost_group, trial_cfg

# Tune's snapshot files in ray/ (and our consistent copy of them, see ResultsWriter)
SNAPSHOT_FILES = ("experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json")
SNAPSHOT = "ray-snapshot.pkl"  # beside ray/, not in it: Tune syncs ray/ and would overwrite it

# Tune's trial status strings (ray.tune.experiment.Trial).
TERMINATED, ERROR, RUNNING = "TERMINATED", "ERROR", "RUNNING"


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    # A searched key may take values of several types (train.channels_last: [auto, true]):
    # pyarrow refuses such a column, and the whole table would be lost; it is written as text.
    for col in df.columns[df.dtypes == object]:
        kinds = {type(v) for v in df[col] if v is not None and v == v}
        if len(kinds) > 1 and not kinds <= {int, float}:
            df[col] = df[col].map(lambda v: v if v is None or v != v else str(v))
    with atomic_path(path) as tmp:  # readers see the old table or the new one, never half
        df.to_parquet(tmp, index=False)


def write_json(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def fmt_t(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60:02d}:{s % 60:02d}"


_RAY_KEYS = {"epoch", "phase", "final", "should_checkpoint", "dataset_label", "time_total_s",
             "time_this_iter_s", "done", "training_iteration", "timestamp", "pid", "hostname",
             "node_ip", "date", "time_since_restore", "iterations_since_restore",
             "checkpoint_dir_name", "trial_id", "experiment_tag", "config"}


def _failure_reason(trial) -> str:
    """One line on why a trial failed, from the last failure in Tune's error file: the node
    that was lost, or the exception's last line."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    text = text.rsplit("Failure # ", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
    node = [ln for ln in lines if "node" in ln.lower() and ("died" in ln or "dead" in ln)]
    line = (node or lines or ["unknown error"])[0 if node else -1]
    return line.split(". ")[0].rstrip(".")[:200]  # its first sentence


class ResultsWriter(tune.Callback):
    """Writes trials.parquet / epochs.parquet as trials finish, asha_rungs.json, and the
    progress line. Its Tune snapshot state carries the scheduler's rungs (see GroupedASHA)."""

    def __init__(self, store: RunStore, base: dict, sw: SweepConfig, prov: dict, label: str,
                 planned: int, max_t: int, scheduler=None, quiet: bool = False,
                 resume: bool = False):
        self.store, run_dir = store, store.local
        self.run_dir, self.base, self.sw, self.prov, self.label = run_dir, base, sw, prov, label
        self.planned, self.max_t, self.scheduler, self.quiet = planned, max_t, scheduler, quiet
        self.name = sw.search.name
        self.t0 = time.time()
        self.last_print = 0.0
        self.session_epochs = 0
        self.session_done: set[str] = set()  # trials finished by this process
        self.unfinished: list[str] = []  # trials Tune had but that never finished (interrupt)
        self.staging: str | None = None  # Tune's staging folder for its snapshots
        self.resume = resume
        self.last: dict[str, dict] = {}
        self.started: dict[str, float] = {}  # trial id -> when Tune started it (this process)
        self.rows: dict[str, dict] = {}
        self.epochs: dict[tuple, dict] = {}
        self.restarts: dict[str, int] = {}  # trial id -> times Tune restarted it (max_failures)
        tp, ep = run_dir / "trials.parquet", run_dir / "epochs.parquet"
        if tp.exists():  # resume: what earlier runs recorded (reconciled in the first step)
            for r in pd.read_parquet(tp).to_dict("records"):
                self.rows[r["trial_id"]] = r
        if ep.exists():
            for r in pd.read_parquet(ep).to_dict("records"):
                self.epochs[(r["trial_id"], int(r["epoch"]))] = r
        self.reconciled = not (resume or self.rows or self.epochs)
        (run_dir / "checkpoints").mkdir(exist_ok=True)

    # -- Tune snapshot state ------------------------------------------------------------------

    def get_state(self):
        # epochs.parquet is written when a trial ends: the epochs of running trials travel in
        # the snapshot, so a resumed trial's history has no hole where a kill fell
        running = [r for (tid, _), r in self.epochs.items() if tid not in self.rows]
        state = {"version": 1, "epochs": copy.deepcopy(running),
                 "restarts": dict(self.restarts),
                 "scheduler": self.scheduler.state() if self.scheduler is not None else None}
        self._write_snapshot(state)
        return state

    def _write_snapshot(self, state: dict) -> None:
        """Tune writes its snapshot (trials, searcher, the search wrappers' state, callback
        state) into a staging folder and then copies it file by file into ray/: a kill during
        that copy leaves ray/ with torn files or files of two snapshots (say a searcher that
        issued a trial the trial list lacks: that trial would be lost). Tune calls get_state
        right after writing the rest of the snapshot to staging, so here the staged files and
        this state form one consistent snapshot: they go into ray-snapshot.pkl (beside ray/:
        Tune's sync would overwrite a file in it) in one atomic write, which --resume puts back
        first (`_restore_snapshot`)."""
        if self.staging is None:
            return
        files = {}
        for pattern in SNAPSHOT_FILES:
            found = sorted(Path(self.staging).glob(pattern))
            if found:
                files[found[-1].name] = found[-1].read_bytes()
        names = [n for n in files if n.startswith("experiment_state-")]
        if not names:
            return
        session = names[0][len("experiment_state-"):-len(".json")]
        files[f"callback-states-{session}.pkl"] = ray.cloudpickle.dumps({0: state})
        try:
            with atomic_path(self.run_dir / SNAPSHOT) as tmp:
                tmp.write_bytes(pickle.dumps({"version": 1, "files": files}))
            self.store.push(SNAPSHOT, soft=True)
        except (OSError, KDTuneError):  # insurance only: never fail Tune's own snapshot for it
            pass

    def set_state(self, state):
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state(state["scheduler"])
        for r in state.get("epochs", []):
            self.epochs[(r["trial_id"], int(r["epoch"]))] = r
        self.restarts.update(state.get("restarts") or {})

    # -- events --------------------------------------------------------------------------------

    def on_step_begin(self, iteration, trials, **info):
        if self.staging is None and trials:
            self.staging = trials[0].storage.experiment_driver_staging_path
        if not self.reconciled:
            self.reconciled = True
            self._reconcile(trials)

    def _reconcile(self, trials) -> None:
        """Make the tables agree with the experiment Tune restored: keep the rows of trials it
        holds as finished; drop rows of trials it will run again or does not know (recorded
        after its last snapshot, or errored and now rerun as a new trial)."""
        by_id = {t.trial_id: t for t in trials}
        before = len(self.rows)
        for tid in list(self.rows):
            t = by_id.get(tid)
            if t is None or t.status not in (TERMINATED, ERROR):
                del self.rows[tid]
        for t in trials:  # finished in the snapshot but not in the table: rebuild the row
            if t.status == TERMINATED and t.trial_id not in self.rows and t.last_result:
                self._finish(t)
        for key in list(self.epochs):
            t = by_id.get(key[0])
            last = (t.last_result or {}).get("epoch") if t is not None else None
            if t is None or (t.status != TERMINATED and (last is None or key[1] > last)):
                del self.epochs[key]
        if self.scheduler is not None:
            self.scheduler.forget(set(by_id))
        if before or trials:
            self.flush()
        if self.resume and trials and not self.quiet:
            st = pd.Series([r["status"] for r in self.rows.values()], dtype=object)
            todo = sum(1 for t in trials if t.status not in (TERMINATED, ERROR))
            print(f"[{self.name}] resumed: {len(self.rows)} of {self.planned} trials already "
                  f"finished (completed {int((st == 'completed').sum())}, stopped "
                  f"{int((st == 'stopped').sum())}, errored {int((st == 'errored').sum())}); "
                  f"{todo} to continue or rerun, {max(self.planned - len(trials), 0)} "
                  "not started", flush=True)

    def on_experiment_end(self, trials, **info):
        # an interrupted fit() stops its running trials without on_trial_complete
        self.unfinished = sorted(t.trial_id for t in trials if t.trial_id not in self.rows)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = result
        self.session_epochs += 1
        self.epochs[(trial.trial_id, int(result["epoch"]))] = {
            "trial_id": trial.trial_id, "epoch": int(result["epoch"]),
            "phase": result.get("phase"), "val_acc": result.get("val_acc"),
            "train_loss": result.get("train_loss"), "lr": result.get("lr")}
        self.progress(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.session_done.add(trial.trial_id)
        self._finish(trial)
        self.flush()
        self.progress(trials, force=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A trial failed (its node was lost, its worker died, it raised) and Tune restarts it
        from its last checkpoint (search.max_failures): it reports again the epochs after
        that checkpoint, which replace those it reported before under the same (trial id,
        epoch) key; any it reported past the checkpoint are dropped now, so that a restart
        stopped earlier (ASHA) or from an older checkpoint leaves no stale epoch behind."""
        tid = trial.trial_id
        self.restarts[tid] = self.restarts.get(tid, 0) + 1
        ckpt = trial.latest_checkpoint_result
        metrics = dict(ckpt.metrics or {}) if ckpt is not None else {}
        epoch = int(metrics.get("epoch") or 0)
        reached = max((k[1] for k in self.epochs if k[0] == tid), default=0)
        node = (self.last.get(tid) or trial.last_result or {}).get("node")
        for key in [k for k in self.epochs if k[0] == tid and k[1] > epoch]:
            del self.epochs[key]
        self.last[tid] = metrics or {"epoch": 0}  # what its row says until it reports again
        if not self.quiet:
            where = f"its epoch {epoch} checkpoint" if epoch else "the start"
            if epoch and reached > epoch:
                where += f", redoing epoch {reached}" if reached == epoch + 1 else \
                    f", redoing epochs {epoch + 1}-{reached}"
            print(f"[{self.name}] trial {tid} failed{f' on {node}' if node else ''} "
                  f"({_failure_reason(trial)}); restarting it from {where} (restart "
                  f"{self.restarts[tid]} of at most {self.sw.search.max_failures})", flush=True)
        self.progress(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        msg = str(getattr(trial, "error_msg", None) or "error")
        try:
            if trial.error_file and Path(trial.error_file).exists():
                msg = Path(trial.error_file).read_text()[-2000:]
        except Exception:  # error text is best effort; the status itself is what matters
            pass
        self.session_done.add(trial.trial_id)
        self.rows[trial.trial_id] = self._row(trial, "errored", msg)
        self.flush()
        if not self.quiet:
            lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
            print(f"[{self.name}] trial {trial.trial_id} errored: "
                  f"{(lines[-1] if lines else 'error')[:200]} (whole error in trials.parquet, "
                  "column error; --resume reruns it)", flush=True)
        self.progress(trials, force=True)

    # -- rows ----------------------------------------------------------------------------------

    def _finish(self, trial) -> None:
        result = self.last.get(trial.trial_id) or trial.last_result or {}
        done = bool(result.get("final"))
        row = self._row(trial, "completed" if done else "stopped", None)
        if done:
            row["checkpoint"] = self._save_checkpoint(trial)
        self.rows[trial.trial_id] = row

    def _row(self, trial, status: str, error: str | None) -> dict:
        result = self.last.get(trial.trial_id) or trial.last_result or {}
        cfg = trial_cfg(self.base, trial.config)
        row = {"trial_id": trial.trial_id, "status": status, "error": error,
               "restarts": self.restarts.get(trial.trial_id, 0),
               "group": cost_group(cfg),  # its ASHA rungs: arch|stem|input size
               "epochs_trained": int(result.get("epoch", 0) or 0),
               "wall_s": result.get("wall_s", result.get("time_total_s")),
               "checkpoint": None, "is_baseline": bool(trial.config.get(BASELINE_KEY)),
               # when this process saw it start and end (driver clock): how trials overlapped
               "started_at": self.started.get(trial.trial_id), "finished_at": time.time()}
        row.update(cfg.flat())
        if row.get("teacher.ensemble") is not None:  # one text cell, as Parquet keeps it
            row["teacher.ensemble"] = json.dumps(row["teacher.ensemble"])
        row["teacher_name"] = cfg.teacher.name()
        row["student_family"] = model_family(cfg.student.arch)
        row["data.label"] = self.label  # the data's name as loaded (the config's may be unset)
        row["seed"] = cfg.seed
        for k, v in result.items():
            if k not in _RAY_KEYS and not isinstance(v, dict):
                row[k] = v
        if status != "completed":
            for k in ("test_acc", "sparsity_pruned", "sparsity_total"):
                row[k] = None
        row.update({k: v for k, v in self.prov.items() if k != "device"})
        row["device"] = result.get("device")
        for k in NUMERIC_METRIC_COLUMNS:  # in every table, NaN until measured: a sweep none
            row.setdefault(k, None)        # of whose trials completed still gets a dashboard
        return row

    def _save_checkpoint(self, trial) -> str | None:
        ck = trial.checkpoint
        if ck is None:
            return None
        name = f"checkpoints/{trial.trial_id}.pt"
        dst = self.run_dir / name
        try:
            with ck.as_directory() as d:
                src = Path(d) / "student.pt"
                if not src.exists():
                    return None
                with atomic_path(dst) as tmp:
                    shutil.copy(src, tmp)
        except OSError:  # copied by an earlier run, or lost
            return self.store.url(name) if dst.is_file() else None
        self.store.push(name, soft=True)
        return self.store.url(name)

    # -- files and progress --------------------------------------------------------------------

    def flush(self):
        # an empty table still names its key columns, so a reader (or a resumed run) finds
        # "no trial yet" rather than a table without columns
        write_parquet(pd.DataFrame(list(self.rows.values()), columns=None if self.rows
                                   else ["trial_id", "status"]),
                      self.run_dir / "trials.parquet")
        write_parquet(pd.DataFrame(list(self.epochs.values()), columns=None if self.epochs
                                   else ["trial_id", "epoch"]),
                      self.run_dir / "epochs.parquet")
        if self.scheduler is not None:
            write_json({"group_by": self.scheduler.group_by(), "rungs": self.scheduler.rungs(),
                        "stops": self.scheduler.decisions},
                       self.run_dir / "asha_rungs.json")
        self.store.push("trials.parquet", "epochs.parquet", "asha_rungs.json", soft=True)

    def progress(self, trials, force=False):
        now = time.time()
        if self.quiet or (not force and now - self.last_print < 10):
            return
        self.last_print = now
        st = pd.Series([r["status"] for r in self.rows.values()], dtype=object)
        running = sum(1 for t in trials if t.status == RUNNING)
        best = {}
        # per student architecture (rows' "group" is the finer ASHA cost group)
        for r in list(self.rows.values()) + [
                {GROUP_KEY: str(t.config.get(GROUP_KEY, self.base["student"]["arch"])),
                 "val_acc": self.last[t.trial_id].get("val_acc")}
                for t in trials if t.trial_id in self.last]:
            v = r.get("val_acc")
            if v is not None and v == v:
                best[r[GROUP_KEY]] = max(best.get(r[GROUP_KEY], 0), v)
        elapsed = now - self.t0
        left = max(self.planned * self.max_t - len(self.epochs), 0)
        eta = f", ~{fmt_t(elapsed / self.session_epochs * left)} left at most" \
            if self.session_epochs else ""
        bests = " ".join(f"{g} {v:.1%}" for g, v in sorted(best.items()))
        print(f"[{self.name}] {fmt_t(elapsed)} elapsed{eta} | running {running}, "
              f"completed {int((st == 'completed').sum())}, stopped "
              f"{int((st == 'stopped').sum())}, errored {int((st == 'errored').sum())} "
              f"of {self.planned} | best val_acc: {bests or '-'}", flush=True)


