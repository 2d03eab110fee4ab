"""Sweeps: a YAML search space run as Ray Tune trials, chosen by Optuna, stopped early by ASHA.

The only module that imports Ray. Layout of a run folder:

    sweep.yaml        the resolved sweep (base config + search section), as run
    teachers.json     each distinct teacher, prepared once before any trial
    trials.parquet    a row per trial: status, flattened config, metrics, provenance
    epochs.parquet    per-epoch history of every trial
    asha_rungs.json   ASHA's rungs per student architecture (what each stop was judged against)
    checkpoints/      final student state_dicts of completed trials
    ray/              Ray Tune's experiment state (what --resume restores)
    dashboard.html    written at the end (kdtune.dashboard)
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from .config import STEM_SHORTHAND, SweepConfig, TrialConfig, load_sweep_config, trial_config
from .errors import KDTuneError

SEED_KEY = "seed"
BASELINE_KEY = "is_baseline"
GROUP_KEY = "student.arch"


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
    """Longest trial the space allows: ASHA's max_t (prune.ratio may be searched)."""
    ft = sw.base.prune.finetune_epochs
    for key in ("train.epochs", "prune.finetune_epochs"):
        if key in sw.space:
            spec = sw.space[key]
            hi = max(spec.values) if spec.values else spec.high
            if key == "train.epochs":
                return int(hi) + ft
            ft = int(hi)
    return sw.base.train.epochs + ft


# --- Ray pieces ---------------------------------------------------------------------------------


def _optuna_space(sw: SweepConfig):
    from optuna import distributions as d

    space = {}
    for key, spec in sw.space.items():
        if spec.type == "uniform":
            space[key] = d.FloatDistribution(spec.low, spec.high, step=spec.step)
        elif spec.type == "loguniform":
            space[key] = d.FloatDistribution(spec.low, spec.high, log=True)
        elif spec.type == "int":
            space[key] = d.IntDistribution(int(spec.low), int(spec.high),
                                           step=int(spec.step or 1))
        else:
            space[key] = d.CategoricalDistribution(spec.values)
    return space


def _sampler(sw: SweepConfig):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = sw.search.search_seed
    s = sw.search.sampler
    if s == "grid":
        return optuna.samplers.GridSampler({k: v.values for k, v in sw.space.items()}, seed=seed)
    if s == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def make_searcher(sw: SweepConfig):
    """Optuna picks configs; our wrapper runs each once per seed and puts baselines first."""
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    metrics = list(sw.search.objectives)
    modes = [sw.search.objectives[m] for m in metrics]
    inner = OptunaSearch(space=_optuna_space(sw) or None,
                         metric=metrics if len(metrics) > 1 else metrics[0],
                         mode=modes if len(modes) > 1 else modes[0], sampler=_sampler(sw),
                         seed=sw.search.search_seed)

    class SeededSearch(Searcher):
        """Each suggestion runs once per seed (optuna is told the mean over seeds); fixed
        baseline configs come first and are not shown to optuna. Unlike Ray's Repeater this
        handles several objectives and saves its own state, so --resume loses nothing."""

        def __init__(self):
            super().__init__(metric=inner.metric, mode=inner.mode)
            self.seeds = list(sw.search.seeds)
            self.fixed = [dict(b, seed=s) for b in baseline_configs(sw) for s in self.seeds]
            self.n_fixed = len(self.fixed)
            self.limit = n_trials(sw)
            self.issued = 0
            self.queue: list[dict] = []  # seed copies still to issue for the current config
            self.groups: dict[str, dict] = {}  # primary trial id -> {trial ids, results}
            self.owner: dict[str, str] = {}  # trial id -> primary trial id

        def set_search_properties(self, metric, mode, config, **spec):
            return True

        def suggest(self, trial_id):
            if self.issued >= self.limit:
                return Searcher.FINISHED
            if self.fixed:
                self.issued += 1
                return self.fixed.pop(0)
            if not self.queue:
                cfg = inner.suggest(trial_id)
                if cfg is None or cfg == Searcher.FINISHED:
                    return cfg
                self.groups[trial_id] = {"ids": [], "results": {}}
                self.queue = [dict(cfg, seed=s) for s in self.seeds]
                self.primary = trial_id
            self.owner[trial_id] = self.primary
            self.groups[self.primary]["ids"].append(trial_id)
            self.issued += 1
            return self.queue.pop(0)

        def on_trial_complete(self, trial_id, result=None, error=False):
            primary = self.owner.get(trial_id)
            if primary is None:
                return  # a baseline
            g = self.groups[primary]
            g["results"][trial_id] = result if (result and not error) else None
            if len(g["results"]) == len(self.seeds):
                done = [r for r in g["results"].values() if r]
                keys = metrics
                if done and all(all(k in r for k in keys) for r in done):
                    mean = {k: sum(r[k] for r in done) / len(done) for k in keys}
                    inner.on_trial_complete(primary, result=mean)
                else:
                    inner.on_trial_complete(primary, result=None, error=True)

        def save(self, checkpoint_path):
            inner_path = checkpoint_path + ".optuna"
            inner.save(inner_path)
            state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
            with open(checkpoint_path, "wb") as f:
                pickle.dump(state, f)

        def restore(self, checkpoint_path):
            inner.restore(checkpoint_path + ".optuna")
            with open(checkpoint_path, "rb") as f:
                self.__dict__.update(pickle.load(f))

    return SeededSearch()


def make_scheduler(sw: SweepConfig, max_t: int):
    """One ASHA per student architecture. A global rung compares a resnet8 against a
    mobilenet at the same epoch and stops exactly the small, fast models a Pareto front
    needs; per-architecture rungs judge like against like. Baselines are never stopped, so
    KD vs no-KD compares equal budgets."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

    metric = next(iter(sw.search.objectives))
    mode = sw.search.objectives[metric]
    a = sw.search.asha

    class GroupedASHA(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.groups: dict[str, ASHAScheduler] = {}
            self.group_of: dict[str, str] = {}
            self.decisions: list[dict] = []

        def set_search_properties(self, metric_, mode_, **spec):
            return True

        def _asha(self, trial):
            if trial.config.get(BASELINE_KEY):
                return None
            g = str(trial.config.get(GROUP_KEY, "default"))
            if g not in self.groups:
                self.groups[g] = ASHAScheduler(
                    time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
                    grace_period=min(a.grace_period, max_t), reduction_factor=a.reduction_factor,
                    stop_last_trials=False)
            self.group_of[trial.trial_id] = g
            return self.groups[g]

        def on_trial_add(self, controller, trial):
            s = self._asha(trial)
            if s is not None:
                s.on_trial_add(controller, trial)

        def _sub(self, trial):
            g = self.group_of.get(trial.trial_id)
            return self.groups[g] if g else None

        def on_trial_result(self, controller, trial, result):
            s = self._sub(trial)
            if s is None or trial.trial_id not in s._trial_info:
                return TrialScheduler.CONTINUE
            action = s.on_trial_result(controller, trial, result)
            if action == TrialScheduler.STOP and not result.get("final"):
                self.decisions.append({"trial_id": trial.trial_id,
                                       "group": self.group_of[trial.trial_id],
                                       "epoch": result.get("epoch"),
                                       metric: result.get(metric)})
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
            out = {}
            for g, s in self.groups.items():
                out[g] = {str(m): sorted(rec) for b in s._brackets for m, rec in b._rungs}
            return out

        def debug_string(self):
            return "GroupedASHA: " + ", ".join(f"{g}" for g in self.groups)

    return GroupedASHA()


def _clean(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items()
            if k not in ("history", "model") and (v is None or isinstance(v, (int, float, str,
                                                                                  bool)))}


def trainable(config: dict, split=None, teachers=None, base=None, cache_mode="none",
              threads=1):
    """The Ray Tune function trainable: one run_trial with tune.report plugged in."""
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
    ckpt = tune.get_checkpoint()
    resume = None
    if ckpt is not None:
        resume = Path(ckpt.to_directory(str(work / "resume")))

    def report(metrics):
        tune.report(_clean(metrics), checkpoint=tune.Checkpoint.from_directory(str(work)))

    try:
        run_trial(cfg, report=report, checkpoint_dir=work, resume_from=resume, split=split,
                  teacher=teacher, cache_mode=cache_mode, log=print)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- outputs ------------------------------------------------------------------------------------


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)  # readers see the old table or the new one, never half


def _fmt_t(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60:02d}:{s % 60:02d}"


def make_callback(run_dir: Path, base: dict, sw: SweepConfig, prov: dict, label: str,
                  planned: int, max_t: int, quiet: bool):
    from ray.tune import Callback

    class ResultsWriter(Callback):
        """Writes trials.parquet / epochs.parquet as trials finish, and the progress line."""

        def __init__(self):
            self.t0 = time.time()
            self.last_print = 0.0
            self.last: dict[str, dict] = {}
            self.rows: dict[str, dict] = {}
            self.epochs: dict[tuple, dict] = {}
            tp, ep = run_dir / "trials.parquet", run_dir / "epochs.parquet"
            if tp.exists():  # resume: keep what earlier runs recorded
                for r in pd.read_parquet(tp).to_dict("records"):
                    self.rows[r["trial_id"]] = r
            if ep.exists():
                for r in pd.read_parquet(ep).to_dict("records"):
                    self.epochs[(r["trial_id"], r["epoch"])] = r
            (run_dir / "checkpoints").mkdir(exist_ok=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.last[trial.trial_id] = result
            self.epochs[(trial.trial_id, result["epoch"])] = {
                "trial_id": trial.trial_id, "epoch": int(result["epoch"]),
                "phase": result.get("phase"), "val_acc": result.get("val_acc"),
                "train_loss": result.get("train_loss"), "lr": result.get("lr")}
            self.progress(trials)

        def _row(self, trial, status: str, error: str | None) -> dict:
            result = self.last.get(trial.trial_id, {})
            cfg = trial_cfg(base, trial.config)
            row = {"trial_id": trial.trial_id, "status": status, "error": error,
                   "group": cfg.student.arch,
                   "epochs_trained": int(result.get("epoch", 0) or 0),
                   "wall_s": result.get("wall_s", result.get("time_total_s")),
                   "checkpoint": None, "is_baseline": bool(trial.config.get(BASELINE_KEY)),
                   "data.label": label}
            row.update(cfg.flat())
            row["seed"] = cfg.seed
            skip = {"epoch", "phase", "final", "should_checkpoint", "dataset_label",
                    "time_total_s", "time_this_iter_s", "done",
                    "training_iteration", "timestamp", "pid", "hostname", "node_ip",
                    "date", "time_since_restore", "iterations_since_restore",
                    "checkpoint_dir_name", "trial_id", "experiment_tag", "config"}
            for k, v in result.items():
                if k not in skip and not isinstance(v, dict):
                    row[k] = v
            if status != "completed":
                for k in ("test_acc", "sparsity_pruned", "sparsity_total"):
                    row[k] = None
            row.update({k: v for k, v in prov.items() if k != "device"})
            row["device"] = result.get("device")
            return row

        def _save_checkpoint(self, trial) -> str | None:
            ck = trial.checkpoint
            if ck is None:
                return None
            dst = run_dir / "checkpoints" / f"{trial.trial_id}.pt"
            with ck.as_directory() as d:
                src = Path(d) / "student.pt"
                if not src.exists():
                    return None
                shutil.copy(src, dst)
            return str(dst)

        def on_trial_complete(self, iteration, trials, trial, **info):
            done = bool(self.last.get(trial.trial_id, {}).get("final"))
            row = self._row(trial, "completed" if done else "stopped", None)
            if done:
                row["checkpoint"] = self._save_checkpoint(trial)
            self.rows[trial.trial_id] = row
            self.flush()
            self.progress(trials, force=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            msg = str(getattr(trial, "error_msg", None) or "error")
            try:
                err_file = Path(trial.local_path) / "error.txt"
                if err_file.exists():
                    msg = err_file.read_text()[-2000:]
            except Exception:  # error text is best effort; the status itself is what matters
                pass
            self.rows[trial.trial_id] = self._row(trial, "errored", msg)
            self.flush()
            self.progress(trials, force=True)

        def flush(self):
            write_parquet(pd.DataFrame(list(self.rows.values())), run_dir / "trials.parquet")
            write_parquet(pd.DataFrame(list(self.epochs.values())), run_dir / "epochs.parquet")

        def progress(self, trials, force=False):
            now = time.time()
            if quiet or (not force and now - self.last_print < 10):
                return
            self.last_print = now
            st = pd.Series([r["status"] for r in self.rows.values()], dtype=object)
            running = sum(1 for t in trials if t.status == "RUNNING")
            best = {}
            for r in list(self.rows.values()) + [
                    {"group": trial_cfg(base, t.config).student.arch,
                     "val_acc": self.last[t.trial_id].get("val_acc")}
                    for t in trials if t.trial_id in self.last]:
                v = r.get("val_acc")
                if v is not None and v == v:
                    best[r["group"]] = max(best.get(r["group"], 0), v)
            epochs_done = len(self.epochs)
            elapsed = now - self.t0
            left = max(planned * max_t - epochs_done, 0)
            eta = f", ~{_fmt_t(elapsed / epochs_done * left)} left at most" if epochs_done \
                else ""
            bests = " ".join(f"{g} {v:.1%}" for g, v in sorted(best.items()))
            print(f"[{sw.search.name}] {_fmt_t(elapsed)} elapsed{eta} | running {running}, "
                  f"completed {int((st == 'completed').sum())}, stopped "
                  f"{int((st == 'stopped').sum())}, errored {int((st == 'errored').sum())} "
                  f"of {planned} | best val_acc: {bests or '-'}", flush=True)

    return ResultsWriter()


def measure_all(run_dir: Path, base: dict, cpu_threads: int, use_gpu: bool) -> None:
    """Latency of every completed student, one at a time on an otherwise idle machine: the
    GPU when there is one, and the CPU with a fixed thread count. Runs as one Ray task so a
    cluster measures on a worker node's GPU, not the head's CPU."""
    import ray

    path = run_dir / "trials.parquet"
    df = pd.read_parquet(path)
    todo = df[(df["status"] == "completed") & df["checkpoint"].notna()]
    if todo.empty:
        return
    jobs = []
    for _, r in todo.iterrows():
        cfg = trial_cfg(base, {k: r[k] for k in ("student.arch", "student.stem",
                                                 "data.resize")})
        jobs.append((r["trial_id"], cfg.student.arch, cfg.student.stem,
                     Path(r["checkpoint"]).read_bytes(), cfg.data.resize or 32,
                     cfg.measure.warmup, cfg.measure.runs, cfg.measure.throughput_batch))

    @ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=cpu_threads)
    def measure_task(jobs, threads):
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

    print(f"measuring latency of {len(jobs)} completed students, one at a time "
          f"({'GPU and ' if use_gpu else ''}CPU with {cpu_threads} thread(s))", flush=True)
    measured = ray.get(measure_task.remote(jobs, cpu_threads))
    for tid, row in measured.items():
        for k, v in row.items():
            if k not in df.columns:
                df[k] = None
            df.loc[df["trial_id"] == tid, k] = v
    for col in ("latency_ms_b1_gpu", "latency_ms_b1_gpu_p90", "throughput_ips_gpu"):
        if col not in df.columns:
            df[col] = float("nan")
    write_parquet(df, path)


def _prepare_teachers(sw: SweepConfig, base: dict, split_ref, want_views: bool,
                      use_gpu: bool, run_dir: Path) -> dict:
    import ray

    from .teacher import teacher_key

    @ray.remote(num_returns=2)
    def prepare(cfg_dict, split, want_views):
        import torch

        from .data import DeviceData
        from .teacher import prepare_teacher
        from .trial import resolve_device

        cfg = trial_config(cfg_dict)
        dev = resolve_device(cfg.device)
        torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources()
                                         .get("CPU", 1))))
        dd = DeviceData(split, dev, augment=cfg.data.augment, resize=cfg.data.resize)
        t = prepare_teacher(cfg, split, dd, want_views=want_views, log=print)
        t.model.cpu()
        if t.views is not None:
            t.views = t.views.cpu()
        meta = {"key": t.key, "arch": cfg.teacher.arch, "stem": cfg.teacher.stem,
                "val_acc": t.val_acc, "test_acc": t.test_acc, "train_s": t.train_s,
                "views_build_s": t.views_build_s, "cache_hit": t.cache_hit,
                "view_cache": t.views is not None}
        return meta, t

    split = ray.get(split_ref)
    cfgs = {}
    for cfg in teacher_configs(sw, base):
        cfgs.setdefault(teacher_key(cfg, split), cfg)
    del split
    print(f"preparing {len(cfgs)} teacher(s) once for the whole sweep: " + ", ".join(
        f"{c.teacher.arch}/{c.teacher.stem}" for c in cfgs.values()), flush=True)
    cpus = max(1, int(ray.available_resources().get("CPU", 1)))
    refs = {k: prepare.options(num_gpus=1 if use_gpu else 0, num_cpus=cpus).remote(
        c.to_dict(), split_ref, want_views) for k, c in cfgs.items()}
    metas = {}
    t0 = time.time()
    pending = {r[0]: k for k, r in refs.items()}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=15)
        for r in ready:
            m = ray.get(r)
            metas[pending.pop(r)] = m
            how = "cache hit" if m["cache_hit"] else f"trained in {m['train_s']:.0f}s"
            print(f"teacher {m['arch']}/{m['stem']}: {how}, val {m['val_acc']:.1%}, test "
                  f"{m['test_acc']:.1%}" + (f", view cache {m['views_build_s']:.0f}s"
                                            if m["view_cache"] else ""), flush=True)
        if pending and not ready:
            print(f"preparing teachers: {len(metas)}/{len(refs)} done, "
                  f"{time.time() - t0:.0f}s", flush=True)
    (run_dir / "teachers.json").write_text(json.dumps(list(metas.values()), indent=1))
    return {k: r[1] for k, r in refs.items()}


def run_sweep(space_path, overrides=None, resume=False, address=None, verbose=False,
              out=None) -> Path:
    sw = load_sweep_config(space_path, overrides)
    run_dir = Path(out or sw.search.storage or Path("results") / sw.search.name)
    if "://" in str(run_dir):
        raise KDTuneError(f"search.storage: {run_dir}: URIs are not supported yet; give a "
                          "local or shared-filesystem path")
    run_dir = run_dir.resolve()
    ray_dir = run_dir / "ray"
    if run_dir.exists() and (run_dir / "sweep.yaml").exists() and not resume:
        raise KDTuneError(f"{run_dir} already holds a sweep; add --resume to continue it, or "
                          "--out / search.name for a new one")
    if resume and not (run_dir / "sweep.yaml").exists():
        raise KDTuneError(f"--resume: no sweep to resume in {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    base = resolve_paths(sw.base.to_dict())
    resolved = {**base, "search": {**sw.search.__dict__,
                                   "asha": sw.search.asha.__dict__,
                                   "resources": sw.search.resources.__dict__}}
    if not resume:
        (run_dir / "sweep.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if not verbose:
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1e9")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    from ray import tune

    from .data import load_split
    from .trial import provenance, resolve_cache_mode

    address = address or os.environ.get("RAY_ADDRESS")
    t_start = time.time()
    split = load_split(sw.base.data, base["cache_dir"])
    ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR,
             configure_logging=True, ignore_reinit_error=True)
    if not verbose:
        for name in ("ray", "ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.ERROR)
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
              f"test); teacher cache: {cache_mode} -> {run_dir}", flush=True)
        split_ref = ray.put(split)
        teachers = _prepare_teachers(sw, base, split_ref, cache_mode == "views",
                                     gpus > 0, run_dir)
        fn = tune.with_parameters(trainable, split=split_ref, teachers=teachers, base=base,
                                  cache_mode=cache_mode, threads=max(1, int(r.cpu)))
        fn = tune.with_resources(fn, {"cpu": r.cpu, "gpu": gpu_frac})
        prov = provenance()
        scheduler = make_scheduler(sw, max_t) if sw.search.scheduler == "asha" else None
        callback = make_callback(run_dir, base, sw, prov, split.label, planned, max_t,
                                 quiet=False)
        run_config = tune.RunConfig(
            name="ray", storage_path=str(run_dir), verbose=2 if verbose else 0,
            callbacks=[callback],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0))
        if resume and tune.Tuner.can_restore(str(ray_dir)):
            tuner = tune.Tuner.restore(str(ray_dir), trainable=fn, resume_unfinished=True,
                                       restart_errored=True)
            # Tuner.restore keeps the old scheduler/callbacks objects only where picklable;
            # ours are re-attached so progress and tables continue.
            tuner._local_tuner._run_config.callbacks = [callback]
            if scheduler is not None:
                tuner._local_tuner._tune_config.scheduler = scheduler
            print(f"resuming sweep in {run_dir}", flush=True)
        else:
            tuner = tune.Tuner(fn, run_config=run_config, tune_config=tune.TuneConfig(
                search_alg=make_searcher(sw), scheduler=scheduler, num_samples=planned,
                max_concurrent_trials=sw.search.max_concurrent, reuse_actors=False))
        tuner.fit()
        if scheduler is not None:
            (run_dir / "asha_rungs.json").write_text(json.dumps(
                {"rungs": scheduler.rungs(), "stops": scheduler.decisions}, indent=1))
        if sw.search.measure_after:
            measure_all(run_dir, base, sw.base.measure.cpu_threads, gpus > 0)
    finally:
        ray.shutdown()
    df = pd.read_parquet(run_dir / "trials.parquet")
    _summary(df, time.time() - t_start, run_dir)
    try:
        from .dashboard import write_dashboard

        print(f"dashboard: {write_dashboard([run_dir], None)}", flush=True)
    except KDTuneError as e:
        print(f"dashboard not written: {e}", file=sys.stderr)
    return run_dir


def _summary(df: pd.DataFrame, wall: float, run_dir: Path) -> None:
    st = df["status"].value_counts().to_dict()
    done = df[df["status"] == "completed"]
    trial_sum = float(pd.to_numeric(df["wall_s"], errors="coerce").fillna(0).sum())
    lines = [f"sweep finished in {_fmt_t(wall)} ({wall:.0f}s; the trials' own times add up to "
             f"{trial_sum:.0f}s, x{trial_sum / max(wall, 1e-9):.2f} parallel); "
             + ", ".join(f"{k} {v}" for k, v in st.items())]
    if not done.empty:
        b = done.loc[done["val_acc"].idxmax()]
        lines.append(f"best by val_acc: {b['trial_id']} {b['student.arch']}/"
                     f"{b['student.stem']} T={b['kd.temperature']:.3g} "
                     f"alpha={b['kd.alpha']:.3g} prune={b['prune.ratio']:.2f}: val "
                     f"{b['val_acc']:.2%}, test {b['test_acc']:.2%}")
    lines.append(f"results: {run_dir / 'trials.parquet'}")
    print("\n".join(lines), flush=True)
