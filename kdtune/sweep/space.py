"""The search space as Optuna sees it, and the searcher that runs each Optuna suggestion once
per seed (plus the fixed baseline runs: alpha = 0 and its KD twin) inside Ray Tune.
"""

from __future__ import annotations

import pickle
import warnings

import optuna
from optuna import distributions as d

from ._ray import ray  # noqa: F401  (first: sets Ray's environment before Ray is imported)
from ray.tune.search import Searcher  # noqa: E402  isort: skip
from ray.tune.search.optuna import OptunaSearch  # noqa: E402  isort: skip

from ..config import SweepConfig
from ..errors import KDTuneError
from .plan import baseline_configs, encode_choice, n_trials, skipped


def optuna_space(sw: SweepConfig, notes: bool = False) -> dict:
    """The space as Optuna distributions. Also run before Ray starts (with `notes`), so what
    only Optuna refuses (a step on a log scale, a fractional int step) is a one-line error
    naming the key, and what it adjusts is a one-line note."""
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
                    space[key] = d.CategoricalDistribution([encode_choice(v)
                                                            for v in spec.values])
        except ValueError as e:
            raise KDTuneError(f"{where}: {e}") from None
        if notes and caught and spec.type in ("uniform", "int"):  # high not on the step grid
            print(f"note: {where}: high {spec.high:g} is not low + a multiple of step "
                  f"{spec.step:g}; the highest value sampled is {space[key].high:g}",
                  flush=True)
    return space


def make_sampler(sw: SweepConfig):
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines
    seed = sw.search.search_seed
    s = sw.search.sampler
    if s == "grid":
        return optuna.samplers.GridSampler({k: [encode_choice(x) for x in v.values]
                                            for k, v in sw.space.items()}, seed=seed)
    if s == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


class SeededSearch(Searcher):
    """Optuna picks configs; each suggestion runs once per
    seed (Optuna is told the mean over the seeds) and the fixed baseline configs come first,
    not shown to Optuna. Unlike Ray's Repeater this handles several objectives and saves its
    whole state, Optuna's study and sampler included, in the one file Tune snapshots, so
    --resume loses nothing."""

    def __init__(self, sw: SweepConfig):
        self.metrics = list(sw.search.objectives)
        modes = [sw.search.objectives[m] for m in self.metrics]
        metric = self.metrics if len(self.metrics) > 1 else self.metrics[0]
        mode = modes if len(modes) > 1 else modes[0]
        super().__init__(metric=metric, mode=mode)
        self.sw = sw
        space = optuna_space(sw)
        self.inner = OptunaSearch(space=space, metric=metric, mode=mode, sampler=make_sampler(sw),
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
        self.inner_ids: dict[str, str] = {}  # primary trial id -> Optuna's id for its config

    def set_search_properties(self, metric, mode, config, **spec):
        return True

    def suggest(self, trial_id):
        if self.issued >= self.limit:
            return "FINISHED"  # Searcher.FINISHED
        if self.fixed:
            self.issued += 1
            return self.fixed.pop(0)
        if not self.queue:
            inner_id = trial_id
            cfg = self.inner.suggest(inner_id) if self.inner is not None else {}
            tries = 0
            while isinstance(cfg, dict) and skipped(self.sw, cfg) and tries < 1000:
                # a combination the sweep skips (plan.skipped): Optuna learns it was pruned
                # and is asked again, under an id Tune never sees; it costs no trial
                self.inner.on_trial_complete(inner_id, result=None)
                tries += 1
                inner_id = f"{trial_id}~skip{tries}"
                cfg = self.inner.suggest(inner_id)
            if tries == 1000:
                cfg = "FINISHED"
            if cfg == "FINISHED":
                self.exhausted = True
            if cfg is None or cfg == "FINISHED":
                return cfg
            self.inner_ids[trial_id] = inner_id
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
                self.inner.on_trial_complete(self.inner_ids.get(primary, primary), result=mean)
            else:
                self.inner.on_trial_complete(self.inner_ids.get(primary, primary),
                                             result=None, error=True)

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


def make_searcher(sw: SweepConfig) -> SeededSearch:
    return SeededSearch(sw)
