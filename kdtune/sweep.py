"""Sweeps: a YAML search space run as Ray Tune trials, chosen by Optuna, stopped early by ASHA.

The only module that imports Ray. Layout of a run folder:

    sweep.yaml        the resolved sweep (base config + search section), as run
    teachers.json     each distinct teacher, prepared once before any trial
    trials.parquet    a row per finished trial: status, flattened config, metrics, provenance
    epochs.parquet    per-epoch history of every trial
    asha_rungs.json   ASHA's rungs per student architecture (what each stop was judged against)
    checkpoints/      final student state_dicts of completed trials
    ray/              Ray Tune's experiment state (what --resume restores)
    ray-snapshot.pkl  the last whole copy of it (a kill can tear Tune's own files)
    dashboard.html    written at the end (kdtune.dashboard)

The run folder may be a URI (s3://, gs://, ...): see kdtune.storage for who writes what where.

Resume (`kdtune sweep SPACE --out RUN --resume`): Ray Tune snapshots the experiment (trial states
and checkpoints, the searcher's state, our callback's state, which carries the ASHA rungs and the
epochs of running trials) into ray/ after every epoch a trial reports, and once more on Ctrl+C;
ray-snapshot.pkl keeps a whole copy of the last one, since a kill can leave Tune's files torn or
mixed. A resumed sweep continues from that snapshot: finished trials are kept, unfinished ones
continue from their last epoch checkpoint, errored ones are rerun from scratch (as new trials),
the searcher and the rungs go on where they were. trials.parquet and epochs.parquet are
reconciled with the snapshot when the resumed run starts (a row recorded after the last
snapshot, e.g. just before a kill -9, belongs to a trial that runs again), so every planned
trial ends up in trials.parquet exactly once.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import pickle
import shutil
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from .config import STEM_SHORTHAND, SweepConfig, TrialConfig, load_sweep_config, trial_config
from .errors import KDTuneError
from .results import NUMERIC_METRIC_COLUMNS
from .storage import RAY_DIR, RunStore, atomic_path

SEED_KEY = "seed"
BASELINE_KEY = "is_baseline"
GROUP_KEY = "student.arch"

# Tune's snapshot files in ray/ (and our consistent copy of them, see ResultsWriter)
SNAPSHOT_FILES = ("experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json")
SNAPSHOT = "ray-snapshot.pkl"  # beside ray/, not in it: Tune syncs ray/ and would overwrite it

# Tune's status and decision strings (ray.tune.experiment.Trial / schedulers.TrialScheduler).
TERMINATED, ERROR, RUNNING = "TERMINATED", "ERROR", "RUNNING"
CONTINUE, STOP = "CONTINUE", "STOP"


def _import_ray():
    """Import Ray, with the environment it reads at import and start-up set first (a value the
    user exported wins): trials keep the driver's working directory (config paths are absolute
    anyway), Tune writes no logger files of its own (we write Parquet), the old-style output is
    the one `verbose` can silence, nothing tries to reach the network. Planning (and so
    `kdtune validate`) never imports Ray."""
    for key, value in (("RAY_CHDIR_TO_TRIAL_DIR", "0"), ("RAY_AIR_NEW_OUTPUT", "0"),
                       ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1"),
                       ("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0"), ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(key, value)
    import ray

    return ray


# --- sweep planning (no Ray) ------------------------------------------------------------------


def resolve_paths(raw: dict) -> dict:
    """Ray runs trials in other working directories: make paths absolute up front."""
    raw = copy.deepcopy(raw)
    if raw["data"].get("root"):
        raw["data"]["root"] = str(Path(raw["data"]["root"]).expanduser().resolve())
    raw["cache_dir"] = str(Path(raw["cache_dir"]).expanduser().resolve())
    return raw


def expand(flat_config: dict) -> list[tuple[str, object]]:
    """A trial's searched values as config overrides; `stem` sets both stems."""
    out = []
    for k, v in flat_config.items():
        if k.startswith("__") or k in (BASELINE_KEY,):
            continue
        if k == STEM_SHORTHAND:
            out += [("teacher.stem", v), ("student.stem", v)]
        else:
            out.append((k, v))
    return out


def trial_cfg(base: dict, flat_config: dict) -> TrialConfig:
    return trial_config(base, expand(flat_config))


def _values(spec) -> list:
    return list(spec.values) if spec.values is not None else []


def teacher_configs(sw: SweepConfig, base: dict) -> list[TrialConfig]:
    """Every distinct teacher the space implies: the product of the listed values of the keys
    that change a teacher (config checks refuse continuous ranges for them)."""
    keys = [k for k in sw.space if k.startswith("teacher.") or k == STEM_SHORTHAND]
    keys = [k for k in keys if k != "teacher.cache"]
    combos = itertools.product(*[_values(sw.space[k]) for k in keys]) if keys else [()]
    out = []
    for combo in combos:
        cfg = trial_cfg(base, dict(zip(keys, combo)))
        cfg.kd.alpha = max(cfg.kd.alpha, 1e-6)  # teachers are for KD trials
        out.append(cfg)
    return out


def baseline_configs(sw: SweepConfig) -> list[dict]:
    """alpha=0 (no-KD) runs for each student arch x stem the space can produce, same budget."""
    if not sw.search.baseline:
        return []
    arch = _values(sw.space[GROUP_KEY]) if GROUP_KEY in sw.space else [sw.base.student.arch]
    if STEM_SHORTHAND in sw.space:
        stems, stem_key = _values(sw.space[STEM_SHORTHAND]), STEM_SHORTHAND
    elif "student.stem" in sw.space:
        stems, stem_key = _values(sw.space["student.stem"]), "student.stem"
    else:
        stems, stem_key = [sw.base.student.stem], "student.stem"
    return [{GROUP_KEY: a, stem_key: s, "kd.alpha": 0.0, BASELINE_KEY: True}
            for a in arch for s in stems]


def n_trials(sw: SweepConfig) -> int:
    seeds = len(sw.search.seeds)
    samples = sw.search.num_samples
    if sw.search.sampler == "grid":
        samples = 1
        for spec in sw.space.values():
            samples *= len(spec.values)
    return (samples + len(baseline_configs(sw))) * seeds


def total_epochs(cfg: TrialConfig) -> int:
    return cfg.train.epochs + (cfg.prune.finetune_epochs if cfg.prune.ratio > 0 else 0)


def max_epochs(sw: SweepConfig, base: dict) -> int:
    """Longest trial the space allows: ASHA's max_t (epochs, fine-tune epochs and prune.ratio
    may be searched; fine-tune epochs only run when something is pruned)."""
    def highest(key, default):
        if key not in sw.space:
            return default
        spec = sw.space[key]
        return max(spec.values) if spec.values else spec.high

    prunes = highest("prune.ratio", sw.base.prune.ratio) > 0
    ft = int(highest("prune.finetune_epochs", sw.base.prune.finetune_epochs)) if prunes else 0
    return int(highest("train.epochs", sw.base.train.epochs)) + ft


# --- Ray pieces ---------------------------------------------------------------------------------
# The searcher, scheduler and callback are written as plain classes here and get their Ray base
# class on first use (`ray_classes`), so importing this module does not import Ray. They are
# module attributes all the same (module __getattr__ below): Tune pickles them into ray/tuner.pkl
# and its snapshots, and a class found under its module and name pickles by reference (a class
# defined inside a function would be pickled by value, closure and all).


def _optuna_space(sw: SweepConfig, notes: bool = False) -> dict:
    """The space as Optuna distributions. Also run before Ray starts (with `notes`), so what
    only Optuna refuses (a step on a log scale, a fractional int step) is a one-line error
    naming the key, and what it adjusts is a one-line note."""
    import warnings

    from optuna import distributions as d

    space = {}
    for key, spec in sw.space.items():
        where = f"search.space.{key}"
        if spec.type == "int" and spec.step is not None and not float(spec.step).is_integer():
            raise KDTuneError(f"{where}: type int needs an integer step, got {spec.step}")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if spec.type == "uniform":
                    space[key] = d.FloatDistribution(spec.low, spec.high, step=spec.step)
                elif spec.type == "loguniform":
                    space[key] = d.FloatDistribution(spec.low, spec.high, log=True,
                                                     step=spec.step)
                elif spec.type == "int":
                    space[key] = d.IntDistribution(int(spec.low), int(spec.high),
                                                   step=int(spec.step or 1))
                else:
                    space[key] = d.CategoricalDistribution(spec.values)
        except ValueError as e:
            raise KDTuneError(f"{where}: {e}") from None
        if notes and caught and spec.type in ("uniform", "int"):  # high not on the step grid
            print(f"note: {where}: high {spec.high:g} is not low + a multiple of step "
                  f"{spec.step:g}; the highest value sampled is {space[key].high:g}",
                  flush=True)
    return space


def _sampler(sw: SweepConfig):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines
    seed = sw.search.search_seed
    s = sw.search.sampler
    if s == "grid":
        return optuna.samplers.GridSampler({k: v.values for k, v in sw.space.items()}, seed=seed)
    if s == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


class _SeededSearch:
    """SeededSearch, a ray.tune Searcher. Optuna picks configs; each suggestion runs once per
    seed (Optuna is told the mean over the seeds) and the fixed baseline configs come first,
    not shown to Optuna. Unlike Ray's Repeater this handles several objectives and saves its
    whole state, Optuna's study and sampler included, in the one file Tune snapshots, so
    --resume loses nothing."""

    def __init__(self, sw: SweepConfig):
        from ray.tune.search.optuna import OptunaSearch

        self.metrics = list(sw.search.objectives)
        modes = [sw.search.objectives[m] for m in self.metrics]
        metric = self.metrics if len(self.metrics) > 1 else self.metrics[0]
        mode = modes if len(modes) > 1 else modes[0]
        super().__init__(metric=metric, mode=mode)
        space = _optuna_space(sw)
        self.inner = OptunaSearch(space=space, metric=metric, mode=mode, sampler=_sampler(sw),
                                  seed=sw.search.search_seed) if space else None
        self.seeds = list(sw.search.seeds)
        self.fixed = [dict(b, seed=s) for b in baseline_configs(sw) for s in self.seeds]
        self.limit = n_trials(sw)
        self.issued = 0
        self.exhausted = False  # Optuna has nothing left to suggest (a grid, all tried)
        self.queue: list[dict] = []  # seed copies still to issue for the current config
        self.primary: str | None = None  # trial id Optuna knows the current config by
        self.groups: dict[str, dict] = {}  # primary trial id -> {trial ids, results}
        self.owner: dict[str, str] = {}  # trial id -> primary trial id

    def set_search_properties(self, metric, mode, config, **spec):
        return True

    def suggest(self, trial_id):
        if self.issued >= self.limit:
            return "FINISHED"  # Searcher.FINISHED
        if self.fixed:
            self.issued += 1
            return self.fixed.pop(0)
        if not self.queue:
            cfg = self.inner.suggest(trial_id) if self.inner is not None else {}
            if cfg == "FINISHED":
                self.exhausted = True
            if cfg is None or cfg == "FINISHED":
                return cfg
            self.groups[trial_id] = {"ids": [], "results": {}}
            self.queue = [dict(cfg, seed=s) for s in self.seeds]
            self.primary = trial_id
        self.owner[trial_id] = self.primary
        self.groups[self.primary]["ids"].append(trial_id)
        self.issued += 1
        return self.queue.pop(0)

    def done(self) -> bool:
        """Every trial has been handed out (after which Tune asks no more)."""
        return self.issued >= self.limit or self.exhausted

    def on_trial_complete(self, trial_id, result=None, error=False):
        primary = self.owner.get(trial_id)
        if primary is None:
            return  # a baseline (or a rerun of an errored trial: its seed group is settled)
        g = self.groups[primary]
        g["results"][trial_id] = result if (result and not error) else None
        if len(g["results"]) == len(self.seeds) and self.inner is not None:
            done = [r for r in g["results"].values() if r]
            if done and all(all(k in r for k in self.metrics) for r in done):
                mean = {k: sum(r[k] for r in done) / len(done) for k in self.metrics}
                self.inner.on_trial_complete(primary, result=mean)
            else:
                self.inner.on_trial_complete(primary, result=None, error=True)

    # Tune writes save() to a temporary name and renames it: everything goes into that one file.
    def save(self, checkpoint_path):
        state = {k: v for k, v in self.__dict__.items() if k != "inner" and not k.startswith("_")}
        inner = self.inner.__dict__.copy() if self.inner is not None else None
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"state": state, "optuna": inner}, f)

    def restore(self, checkpoint_path):
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        self.__dict__.update(saved["state"])
        if self.inner is not None and saved["optuna"] is not None:
            self.inner.__dict__.update(saved["optuna"])


class _GroupedASHA:
    """GroupedASHA, a ray.tune scheduler: one ASHA per student architecture. A global rung
    compares a resnet8 against a mobilenet at the same epoch and stops exactly the small, fast
    models a Pareto front needs; per-architecture rungs judge like against like. Baselines are
    never stopped, so KD vs no-KD compares equal budgets.

    Tune does not snapshot schedulers; `state()`/`load_state()` let ResultsWriter carry the rungs
    and stop decisions in its own snapshot, so a resumed sweep judges against the same rungs and
    repeats a stop that was decided before the snapshot."""

    def __init__(self, metric: str, mode: str, max_t: int, grace_period: int,
                 reduction_factor: float):
        super().__init__()
        self.asha_metric, self.asha_mode = metric, mode
        self.max_t = max_t
        self.grace_period = min(grace_period, max_t)
        self.reduction_factor = reduction_factor
        self.groups: dict = {}  # student arch -> ASHAScheduler
        self.group_of: dict[str, str] = {}
        self.decisions: list[dict] = []
        self.stopped: dict[str, int] = {}  # trial id -> epoch it was stopped at

    def set_search_properties(self, metric, mode, **spec):
        return True

    def _group(self, g: str):
        from ray.tune.schedulers import ASHAScheduler

        if g not in self.groups:
            self.groups[g] = ASHAScheduler(
                time_attr="epoch", metric=self.asha_metric, mode=self.asha_mode,
                max_t=self.max_t, grace_period=self.grace_period,
                reduction_factor=self.reduction_factor, stop_last_trials=False)
        return self.groups[g]

    def on_trial_add(self, controller, trial):
        if trial.config.get(BASELINE_KEY):
            return
        g = str(trial.config.get(GROUP_KEY, "default"))
        self.group_of[trial.trial_id] = g
        self._group(g).on_trial_add(controller, trial)

    def _sub(self, trial):
        g = self.group_of.get(trial.trial_id)
        return self.groups[g] if g else None

    def on_trial_result(self, controller, trial, result):
        s = self._sub(trial)
        if s is None or trial.trial_id not in s._trial_info:
            return CONTINUE
        stop_at = self.stopped.get(trial.trial_id)
        if stop_at is not None and (result.get("epoch") or 0) >= stop_at:
            return STOP  # decided before a resume: decide the same again
        action = s.on_trial_result(controller, trial, result)
        if action == STOP and not result.get("final"):
            self.stopped[trial.trial_id] = int(result.get("epoch") or 0)
            self.decisions.append({"trial_id": trial.trial_id,
                                   "group": self.group_of[trial.trial_id],
                                   "epoch": result.get("epoch"),
                                   self.asha_metric: result.get(self.asha_metric)})
        return action

    def on_trial_complete(self, controller, trial, result):
        s = self._sub(trial)
        if s is not None and trial.trial_id in s._trial_info:
            s.on_trial_complete(controller, trial, result)

    def on_trial_error(self, controller, trial):
        self.on_trial_remove(controller, trial)

    def on_trial_remove(self, controller, trial):
        s = self._sub(trial)
        if s is not None:
            s._trial_info.pop(trial.trial_id, None)

    def rungs(self) -> dict:
        return {g: {str(m): sorted(rec) for b in s._brackets for m, rec in b._rungs}
                for g, s in self.groups.items()}

    def state(self) -> dict:
        return {"groups": {g: [[[m, dict(rec)] for m, rec in b._rungs] for b in s._brackets]
                           for g, s in self.groups.items()},
                "decisions": copy.deepcopy(self.decisions)}

    def load_state(self, state: dict) -> None:
        for g, brackets in state["groups"].items():
            s = self._group(g)
            for b, rungs in zip(s._brackets, brackets):
                b._rungs = [(m, dict(rec)) for m, rec in rungs]
        self.decisions = list(state["decisions"])
        self.stopped = {d["trial_id"]: int(d["epoch"] or 0) for d in self.decisions}

    def forget(self, keep: set) -> None:
        """Drop what is recorded for trials the resumed experiment no longer has (errored
        trials are rerun as new trials)."""
        for s in self.groups.values():
            for b in s._brackets:
                for _, rec in b._rungs:
                    for tid in [t for t in rec if t not in keep]:
                        del rec[tid]
        self.decisions = [d for d in self.decisions if d["trial_id"] in keep]
        self.stopped = {t: e for t, e in self.stopped.items() if t in keep}

    def debug_string(self):
        return "GroupedASHA: " + ", ".join(f"{g}" for g in self.groups)


def make_searcher(sw: SweepConfig):
    return ray_classes()["SeededSearch"](sw)


def make_scheduler(sw: SweepConfig, max_t: int):
    metric = next(iter(sw.search.objectives))
    a = sw.search.asha
    return ray_classes()["GroupedASHA"](metric, sw.search.objectives[metric], max_t,
                                        a.grace_period, a.reduction_factor)


def _clean(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items()
            if k not in ("history", "model") and (v is None or isinstance(v, (int, float, str,
                                                                                  bool)))}


def trainable(config: dict, split=None, teachers=None, base=None, cache_mode="none",
              threads=1):
    """The Ray Tune function trainable: one run_trial with tune.report plugged in. With
    reuse_actors one worker process runs many trials in turn: nothing here may outlive a trial."""
    import tempfile

    import ray
    import torch
    from ray import tune

    from .teacher import teacher_key
    from .trial import run_trial

    torch.set_num_threads(threads)
    cfg = trial_cfg(base, config)
    cfg.measure.latency = False  # trials sharing a device cannot time themselves; see measure_all
    teacher = None
    if cfg.kd.alpha > 0:
        key = teacher_key(cfg, split)
        if key not in teachers:
            raise RuntimeError(f"teacher {key} was not prepared before the trials")
        teacher = copy.deepcopy(ray.get(teachers[key]))
    work = Path(tempfile.mkdtemp(prefix="kdtune-trial-"))
    resume_dir = Path(tempfile.mkdtemp(prefix="kdtune-resume-"))  # not inside work: not re-saved
    ckpt = tune.get_checkpoint()
    resume = None
    if ckpt is not None:  # an empty one (see _recreate_missing_checkpoints): start over
        try:
            resume = Path(ckpt.to_directory(str(resume_dir)))
        except OSError as e:
            print(f"cannot restore {ckpt.path} ({e}); starting the trial over", flush=True)

    def report(metrics):
        tune.report(_clean(metrics), checkpoint=tune.Checkpoint.from_directory(str(work)))

    try:
        run_trial(cfg, report=report, checkpoint_dir=work, resume_from=resume, split=split,
                  teacher=teacher, cache_mode=cache_mode, log=print)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(resume_dir, ignore_errors=True)


# --- outputs ------------------------------------------------------------------------------------


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:  # readers see the old table or the new one, never half
        df.to_parquet(tmp, index=False)


def write_json(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def _fmt_t(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60:02d}:{s % 60:02d}"


_RAY_KEYS = {"epoch", "phase", "final", "should_checkpoint", "dataset_label", "time_total_s",
             "time_this_iter_s", "done", "training_iteration", "timestamp", "pid", "hostname",
             "node_ip", "date", "time_since_restore", "iterations_since_restore",
             "checkpoint_dir_name", "trial_id", "experiment_tag", "config"}


class _ResultsWriter:
    """ResultsWriter, a ray.tune Callback: writes trials.parquet / epochs.parquet as trials
    finish, asha_rungs.json, and the progress line. Its Tune snapshot state carries the
    scheduler's rungs (see GroupedASHA)."""

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
        self.rows: dict[str, dict] = {}
        self.epochs: dict[tuple, dict] = {}
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
        from ray import cloudpickle

        session = names[0][len("experiment_state-"):-len(".json")]
        files[f"callback-states-{session}.pkl"] = cloudpickle.dumps({0: state})
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
               "group": cfg.student.arch,
               "epochs_trained": int(result.get("epoch", 0) or 0),
               "wall_s": result.get("wall_s", result.get("time_total_s")),
               "checkpoint": None, "is_baseline": bool(trial.config.get(BASELINE_KEY))}
        row.update(cfg.flat())
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
        write_parquet(pd.DataFrame(list(self.rows.values())), self.run_dir / "trials.parquet")
        write_parquet(pd.DataFrame(list(self.epochs.values())), self.run_dir / "epochs.parquet")
        if self.scheduler is not None:
            write_json({"rungs": self.scheduler.rungs(), "stops": self.scheduler.decisions},
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
        for r in list(self.rows.values()) + [
                {"group": str(t.config.get(GROUP_KEY, self.base["student"]["arch"])),
                 "val_acc": self.last[t.trial_id].get("val_acc")}
                for t in trials if t.trial_id in self.last]:
            v = r.get("val_acc")
            if v is not None and v == v:
                best[r["group"]] = max(best.get(r["group"], 0), v)
        elapsed = now - self.t0
        left = max(self.planned * self.max_t - len(self.epochs), 0)
        eta = f", ~{_fmt_t(elapsed / self.session_epochs * left)} left at most" \
            if self.session_epochs else ""
        bests = " ".join(f"{g} {v:.1%}" for g, v in sorted(best.items()))
        print(f"[{self.name}] {_fmt_t(elapsed)} elapsed{eta} | running {running}, "
              f"completed {int((st == 'completed').sum())}, stopped "
              f"{int((st == 'stopped').sum())}, errored {int((st == 'errored').sum())} "
              f"of {self.planned} | best val_acc: {bests or '-'}", flush=True)


_RAY_BASES = {"SeededSearch": (_SeededSearch, "ray.tune.search", "Searcher"),
              "GroupedASHA": (_GroupedASHA, "ray.tune.schedulers", "FIFOScheduler"),
              "ResultsWriter": (_ResultsWriter, "ray.tune", "Callback")}


def ray_classes() -> dict:
    """SeededSearch, GroupedASHA, ResultsWriter: each plain class above with its Ray base
    class, built once and published as a module attribute of that name."""
    import importlib

    g = globals()
    if "ResultsWriter" not in g:
        _import_ray()
        for name, (impl, module, base) in _RAY_BASES.items():
            cls = type(name, (impl, getattr(importlib.import_module(module), base)),
                       {"__module__": __name__, "__qualname__": name, "__doc__": impl.__doc__})
            g[name] = cls
    return {name: g[name] for name in _RAY_BASES}


def __getattr__(name):  # unpickling (a resumed sweep) finds the classes here, Ray or no Ray yet
    if name in _RAY_BASES:
        return ray_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _measure_jobs(jobs: list, threads: int) -> dict:
    import io

    import torch

    from . import measure
    from .models import create_model

    out = {}
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    for tid, arch, stem, blob, size, warmup, runs, batch in jobs:
        state = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
        num_classes = next(v for k, v in reversed(state.items())
                           if k.endswith("weight")).shape[0]
        model = create_model(arch, num_classes=num_classes, stem=stem)
        model.load_state_dict(state)
        row = {}
        for dev in devices:
            m = measure.measure_speed(model, torch.device(dev), input_size=size,
                                      batch=batch, warmup=warmup, runs=runs,
                                      threads=threads if dev == "cpu" else None)
            tag = "gpu" if dev == "cuda" else "cpu"
            row[f"latency_ms_b1_{tag}"] = m["latency_ms_b1"]
            row[f"latency_ms_b1_{tag}_p90"] = m["latency_ms_b1_p90"]
            row[f"throughput_ips_{tag}"] = m["throughput_ips"]
            row[f"{tag}_device"] = m["measure_device"]
            if tag == "cpu":
                row["cpu_threads"] = m["measure_threads"]
        out[tid] = row
    return out


def measure_all(run_dir: Path, base: dict, cpu_threads: int, use_gpu: bool,
                in_driver: bool = False) -> None:
    """Latency of every completed student, one at a time on an otherwise idle machine: the
    GPU when there is one, and the CPU with a fixed thread count. Runs as one Ray task so a
    cluster measures on a worker node's GPU, not the head's CPU; `in_driver` (a CPU-only
    machine that is the whole cluster) measures in this process, idle now that the trials are
    done, instead of starting a worker and its torch import for it."""
    path = run_dir / "trials.parquet"
    df = pd.read_parquet(path)
    todo = df[(df["status"] == "completed") & df["checkpoint"].notna()]
    if todo.empty:
        return
    jobs = []
    for _, r in todo.iterrows():
        cfg = trial_cfg(base, {k: r[k] for k in ("student.arch", "student.stem",
                                                 "data.resize")})
        # the run's own copy: the column may name a URI, or a folder the run was moved from
        state = (run_dir / "checkpoints" / f"{r['trial_id']}.pt").read_bytes()
        jobs.append((r["trial_id"], cfg.student.arch, cfg.student.stem, state,
                     cfg.data.resize or 32,
                     cfg.measure.warmup, cfg.measure.runs, cfg.measure.throughput_batch))

    print(f"measuring latency of {len(jobs)} completed students, one at a time "
          f"({'GPU and ' if use_gpu else ''}CPU with {cpu_threads} thread(s))", flush=True)
    ray = _import_ray()
    if in_driver:
        import torch

        threads = torch.get_num_threads()
        try:
            measured = _measure_jobs(jobs, cpu_threads)
        finally:
            torch.set_num_threads(threads)
    else:
        task = ray.remote(_measure_jobs).options(num_gpus=1 if use_gpu else 0,
                                                 num_cpus=cpu_threads)
        measured = ray.get(task.remote(jobs, cpu_threads))
    for tid, row in measured.items():
        for k, v in row.items():
            if k not in df.columns:
                df[k] = None
            df.loc[df["trial_id"] == tid, k] = v
    for col in ("latency_ms_b1_gpu", "latency_ms_b1_gpu_p90", "throughput_ips_gpu"):
        if col not in df.columns:
            df[col] = float("nan")
    write_parquet(df, path)


def _throttled(period: float):
    """A log function that prints at most one line per `period` seconds."""
    last = [time.time()]

    def log(msg):
        if time.time() - last[0] >= period:
            last[0] = time.time()
            print(msg, flush=True)
    return log


def _prepare_one(cfg_dict: dict, split, want_views: bool, threads: int, log=print):
    import torch

    from .data import DeviceData
    from .teacher import prepare_teacher
    from .trial import resolve_device

    cfg = trial_config(cfg_dict)
    dev = resolve_device(cfg.device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dd = DeviceData(split, dev, augment=cfg.data.augment, resize=cfg.data.resize)
        t = prepare_teacher(cfg, split, dd, want_views=want_views, log=log)
    finally:
        torch.set_num_threads(before)
    t.model.cpu()
    if t.views is not None:
        t.views = t.views.cpu()
    meta = {"key": t.key, "arch": cfg.teacher.arch, "stem": cfg.teacher.stem,
            "val_acc": t.val_acc, "test_acc": t.test_acc, "train_s": t.train_s,
            "views_build_s": t.views_build_s, "cache_hit": t.cache_hit,
            "view_cache": t.views is not None}
    return meta, t


def _print_teacher(m: dict) -> None:
    how = "cache hit" if m["cache_hit"] else f"trained in {m['train_s']:.0f}s"
    print(f"teacher {m['arch']}/{m['stem']}: {how}, val {m['val_acc']:.1%}, test "
          f"{m['test_acc']:.1%}" + (f", view cache {m['views_build_s']:.0f}s"
                                    if m["view_cache"] else ""), flush=True)


def _prepare_teachers(sw: SweepConfig, base: dict, split, split_ref, want_views: bool,
                      use_gpu: bool, run_dir: Path, in_driver: bool = False,
                      verbose: bool = False) -> dict:
    """Each distinct teacher once, before any trial, into the object store (teacher key ->
    ref). A Ray task (a GPU on a cluster's worker); `in_driver` (a CPU-only machine that is the
    whole cluster) prepares them in this process, which has torch loaded already."""
    from .teacher import teacher_key

    ray = _import_ray()
    cfgs = {}
    for cfg in teacher_configs(sw, base):
        cfgs.setdefault(teacher_key(cfg, split), cfg)
    print(f"preparing {len(cfgs)} teacher(s) once for the whole sweep: " + ", ".join(
        f"{c.teacher.arch}/{c.teacher.stem}" for c in cfgs.values()), flush=True)
    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    metas, out = {}, {}
    if in_driver:
        for k, c in cfgs.items():
            metas[k], t = _prepare_one(c.to_dict(), split, want_views, cpus,
                                       log=print if verbose else _throttled(15))
            out[k] = ray.put(t)
            _print_teacher(metas[k])
    else:
        task = ray.remote(_prepare_one).options(num_returns=2, num_cpus=cpus,
                                                num_gpus=1 if use_gpu else 0)
        refs = {k: task.remote(c.to_dict(), split_ref, want_views, cpus)
                for k, c in cfgs.items()}
        t0 = time.time()
        pending = {r[0]: k for k, r in refs.items()}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=15)
            for r in ready:
                k = pending.pop(r)
                metas[k] = ray.get(r)
                _print_teacher(metas[k])
            if pending and not ready:
                print(f"preparing teachers: {len(metas)}/{len(refs)} done, "
                      f"{time.time() - t0:.0f}s", flush=True)
        out = {k: r[1] for k, r in refs.items()}
    write_json([metas[k] for k in cfgs], run_dir / "teachers.json")
    return out


def _first_difference(a, b, prefix=""):
    """Dotted key of the first difference between two nested dicts, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else prefix.rstrip(".")


# Where this machine keeps things: a sweep resumed elsewhere (its run folder at a URI) may have
# them somewhere else. The data itself must be the same: checked by `_check_same_data`.
MACHINE_LOCAL_KEYS = (("cache_dir",), ("data", "root"))


def _portable(resolved: dict) -> dict:
    out = copy.deepcopy(resolved)
    for path in MACHINE_LOCAL_KEYS:
        d = out
        for k in path[:-1]:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(path[-1], None)
    return out


def _check_same_data(sw: SweepConfig, base: dict, split, run_dir: Path) -> None:
    """A resumed sweep trains on the data it started with: the teachers it would prepare now
    (keyed by the data's content, kdtune.teacher.teacher_key) are those it prepared then."""
    from .teacher import teacher_key

    path = run_dir / "teachers.json"
    if not path.is_file():
        return  # killed before its teachers were ready: nothing was trained on any data yet
    then = {m["key"] for m in json.loads(path.read_text())}
    now = {teacher_key(cfg, split) for cfg in teacher_configs(sw, base)}
    if now != then:
        raise KDTuneError(f"--resume: the data at data.root={base['data'].get('root')} "
                          f"({split.label}) is not the data this sweep started with; point "
                          "data.root at the same data")


def _restore_snapshot(store: RunStore) -> None:
    """Put the last whole snapshot ResultsWriter saved back in place of Tune's files, which a
    kill may have left torn or mixed (see ResultsWriter._write_snapshot)."""
    path = store.local / SNAPSHOT
    if not path.is_file():
        return
    try:
        files = pickle.loads(path.read_bytes())["files"]
    except Exception:  # noqa: BLE001 - it is renamed into place whole; unreadable: leave Tune's
        return
    ours = max(n for n in files if n.startswith("experiment_state-"))
    theirs = store.ray_glob("experiment_state-*.json")
    if theirs and theirs[-1] > ours:
        return  # Tune's files are of a later session than ours (ours was not written): keep
    for pattern in SNAPSHOT_FILES + ("callback-states-*.pkl",):
        for old in store.ray_glob(pattern):
            if old not in files:
                store.ray_delete(old)
    for name, data in files.items():
        store.ray_write(name, data)


def _recreate_missing_checkpoints(store: RunStore) -> None:
    """Tune registers a trial's new checkpoint, deletes the one before and only then writes the
    snapshot that names the new one: a kill in between leaves a snapshot naming a deleted
    checkpoint, and Tune refuses to restore that trial ("does not exist on storage anymore").
    An empty folder in its place lets it restore; the trial, finding no state in it, starts
    over (see `trainable`). Best effort: reads Tune's own state format."""
    try:
        from ray.tune.utils.serialization import _loads_with_cloudpickle

        states = store.ray_glob("experiment_state-*.json")
        if not states:
            return
        for _, meta in _loads_with_cloudpickle(store.ray_read_text(states[-1]))["trial_data"]:
            manager = _loads_with_cloudpickle(meta).get("checkpoint_manager")
            latest = getattr(manager, "latest_checkpoint_result", None)
            if latest is None or latest.checkpoint is None:
                continue
            old = Path(latest.checkpoint.path)
            rel = f"{old.parent.name}/{old.name}"  # the run folder may have moved
            if store.ray_is_dir(old.parent.name) and not store.ray_exists(rel):
                store.ray_mkdir(rel)
                print(f"--resume: the last checkpoint of {old.parent.name.split('_')[1]} was "
                      "lost when the sweep was killed; that trial starts over", flush=True)
    except Exception:  # noqa: BLE001 - Tune's format changed: restore without the repair
        pass


def _restore_tuner(store: RunStore, fn, run_config, searcher, scheduler):
    """Tuner.restore brings back the trials, the searcher (its saved state) and the tuner.pkl
    copies of the callbacks and scheduler. Those copies are frozen at the sweep's start, so the
    live ones of this process (this run folder, this code version, this verbosity) are put in
    their place; their state comes from the snapshot through ResultsWriter.set_state."""
    ray = _import_ray()
    from ray import tune

    _restore_snapshot(store)
    _recreate_missing_checkpoints(store)
    tuner = tune.Tuner.restore(store.ray_path, trainable=fn, resume_unfinished=True,
                               resume_errored=False, restart_errored=True,
                               storage_filesystem=store.ray_storage()[1])
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None or not hasattr(internal, "_run_config") or \
            not hasattr(internal, "_tune_config"):
        raise KDTuneError(f"--resume: Ray {ray.__version__}'s Tuner has no _run_config/"
                          "_tune_config to re-attach the sweep's callbacks to; kdtune's resume "
                          "needs updating for this Ray version")
    internal._run_config.callbacks = run_config.callbacks
    internal._run_config.verbose = run_config.verbose
    internal._tune_config.search_alg = searcher  # Tune restores its state from the snapshot
    if scheduler is not None:
        internal._tune_config.scheduler = scheduler
    return tuner


def run_sweep(space_path, overrides=None, resume=False, address=None, verbose=False,
              out=None) -> Path:
    sw = load_sweep_config(space_path, overrides)
    _optuna_space(sw, notes=True)  # what config checks let through but Optuna refuses
    base = resolve_paths(sw.base.to_dict())
    store = RunStore(out or sw.search.storage or Path("results") / sw.search.name,
                     base["cache_dir"])
    held = store.exists("sweep.yaml")
    if held and not resume:
        raise KDTuneError(f"{store} already holds a sweep; add --resume to continue it, or "
                          "--out / search.name for a new one")
    if resume and not held:
        raise KDTuneError(f"--resume: no sweep to resume in {store}")
    if resume:
        store.pull()  # a URI run: its files, as the bucket holds them, into a fresh local copy
    else:
        store.prepare_local()
    run_dir = store.local
    resolved = {**base, "search": {**sw.search.__dict__,
                                   "asha": sw.search.asha.__dict__,
                                   "resources": sw.search.resources.__dict__}}
    resolved = yaml.safe_load(yaml.safe_dump(resolved, sort_keys=False))
    if resume:
        try:
            stored = yaml.safe_load((run_dir / "sweep.yaml").read_text())
        except yaml.YAMLError:
            stored = None
        diff = _first_difference(_portable(resolved), _portable(stored)) \
            if isinstance(stored, dict) else "sweep.yaml"
        if diff:
            raise KDTuneError(f"--resume: {diff} differs from the sweep in {store} (its "
                              "sweep.yaml); resume with the same file and --set overrides")
    if not resume:
        (run_dir / "sweep.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        store.push("sweep.yaml")

    if not verbose:
        # Tune's own error output is a traceback per errored trial and a list at the end; the
        # progress line names each errored trial instead (-v shows Tune's).
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1e9")
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    ray = _import_ray()
    from ray import tune

    from .data import load_split
    from .trial import provenance, resolve_cache_mode

    address = address or os.environ.get("RAY_ADDRESS")
    t_start = time.time()
    split = load_split(sw.base.data, base["cache_dir"])
    if resume:
        _check_same_data(sw, base, split, run_dir)
    ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR,
             configure_logging=True, ignore_reinit_error=True)
    if not verbose:
        for name in ("ray", "ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)  # "Trials did not complete"
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        r = sw.search.resources
        gpu_frac = r.gpu if r.gpu is not None else (1.0 if gpus else 0.0)
        planned = n_trials(sw)
        max_t = sw.search.asha.max_t or max_epochs(sw, base)
        probe = trial_cfg(base, {})
        cache_mode = "views" if sw.base.teacher.cache == "auto" and \
            planned * sw.base.train.epochs > 162 else resolve_cache_mode(
                probe if probe.kd.alpha > 0 else trial_cfg(base, {"kd.alpha": 0.5}),
                planned * sw.base.train.epochs)
        print(f"sweep '{sw.search.name}': {planned} trials ({len(sw.search.seeds)} seed(s)), "
              f"up to {max_t} epochs each, {sw.search.max_concurrent} at a time, "
              f"{gpu_frac:g} GPU + {r.cpu:g} CPU per trial; data {split.label} "
              f"({len(split.y_train)} train / {len(split.y_val)} val / {len(split.y_test)} "
              f"test); teacher cache: {cache_mode} -> {store}" + (
                  f" (working copy {run_dir})" if store.remote else ""), flush=True)
        split_ref = ray.put(split)
        # A CPU-only machine that is the whole cluster: teachers and the final latency
        # measurement run in this process (torch is loaded here already) rather than in
        # workers started for them.
        in_driver = not address and not gpus
        teachers = _prepare_teachers(sw, base, split, split_ref, cache_mode == "views",
                                     gpus > 0, run_dir, in_driver=in_driver, verbose=verbose)
        store.push("teachers.json")
        fn = tune.with_parameters(trainable, split=split_ref, teachers=teachers, base=base,
                                  cache_mode=cache_mode, threads=max(1, int(r.cpu)))
        fn = tune.with_resources(fn, {"cpu": r.cpu, "gpu": gpu_frac})
        prov = provenance()
        searcher = make_searcher(sw)
        scheduler = make_scheduler(sw, max_t) if sw.search.scheduler == "asha" else None
        storage_path, storage_fs = store.ray_storage()
        restore = resume and tune.Tuner.can_restore(store.ray_path,
                                                    storage_filesystem=storage_fs)
        writer = ray_classes()["ResultsWriter"](store, base, sw, prov, split.label, planned,
                                                max_t, scheduler=scheduler, resume=resume)
        run_config = tune.RunConfig(
            name=RAY_DIR, storage_path=storage_path, storage_filesystem=storage_fs,
            verbose=2 if verbose else 0,
            callbacks=[writer],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0))
        if restore:
            print(f"resuming the sweep in {store}", flush=True)
            tuner = _restore_tuner(store, fn, run_config, searcher, scheduler)
        else:
            if resume:
                print(f"--resume: no trial had started in {store}; starting them now",
                      flush=True)
                store.ray_remove()
                store.delete(SNAPSHOT)
            # reuse_actors: a trial runs in the worker process of a finished one (reset_config
            # of Tune's function trainable), so a sweep starts max_concurrent processes, and
            # pays Python + torch start-up that often, instead of once per trial.
            tuner = tune.Tuner(fn, run_config=run_config, tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=planned,
                max_concurrent_trials=sw.search.max_concurrent, reuse_actors=True))
        sigint = signal.getsignal(signal.SIGINT)
        try:
            tuner.fit()
        finally:  # Tune leaves its Ctrl+C handler installed when no Ctrl+C came
            signal.signal(signal.SIGINT, sigint)
        writer.flush()
        if writer.unfinished or not searcher.done():
            again = " with the same --set options" if overrides else ""
            print(f"sweep interrupted: {len(writer.rows)} of {planned} trials finished; state "
                  f"saved in {store.url(RAY_DIR)}. Continue with: kdtune sweep {space_path} "
                  f"--out {store} --resume{again}", file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        if len(writer.rows) < planned:
            print(f"note: the searcher ran out of configs after {len(writer.rows)} of "
                  f"{planned} planned trials", flush=True)
        if sw.search.measure_after:
            measure_all(run_dir, base, sw.base.measure.cpu_threads, gpus > 0,
                        in_driver=in_driver)
        store.push("trials.parquet")  # with any upload that failed during the sweep: raises
    finally:
        ray.shutdown()
    df = pd.read_parquet(run_dir / "trials.parquet")
    _summary(df, time.time() - t_start, store, writer.session_done)
    try:
        from .dashboard import OUTPUT_FILES, write_dashboard

        html = write_dashboard([run_dir], None, sources=[str(store)])
        store.push(*OUTPUT_FILES)
        print(f"dashboard: {store.url(html.name) if store.remote else html}", flush=True)
    except KDTuneError as e:
        print(f"dashboard not written: {e}", file=sys.stderr)
    return run_dir


def _summary(df: pd.DataFrame, wall: float, store: RunStore, session: set) -> None:
    if df.empty:
        print(f"sweep finished in {_fmt_t(wall)} with no trial recorded", flush=True)
        return
    st = df["status"].value_counts().to_dict()
    done = df[df["status"] == "completed"]
    ran = df[df["trial_id"].isin(session)]  # a resumed sweep: only what ran in this process
    trial_sum = float(pd.to_numeric(ran["wall_s"], errors="coerce").fillna(0).sum())
    lines = [f"sweep finished in {_fmt_t(wall)} ({wall:.0f}s; the trials' own times add up to "
             f"{trial_sum:.0f}s, x{trial_sum / max(wall, 1e-9):.2f} parallel); "
             + ", ".join(f"{k} {v}" for k, v in st.items())]
    if not done.empty:
        b = done.loc[done["val_acc"].idxmax()]
        lines.append(f"best by val_acc: {b['trial_id']} {b['student.arch']}/"
                     f"{b['student.stem']} T={b['kd.temperature']:.3g} "
                     f"alpha={b['kd.alpha']:.3g} prune={b['prune.ratio']:.2f}: val "
                     f"{b['val_acc']:.2%}, test {b['test_acc']:.2%}")
    lines.append(f"results: {store.url('trials.parquet')}")
    print("\n".join(lines), flush=True)
