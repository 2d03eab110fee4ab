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

from ..config import STEM_SHORTHAND, SweepConfig
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


OPTUNA_DB = "optuna.db"  # the study's default SQLite file, in the run folder

# How a searched config maps onto its Optuna trial (also said in the README and kept in the
# study's user attributes, so optuna-dashboard shows it).
MAPPING = ("one Optuna trial per searched config, run once per seed in search.seeds; its value "
           "is the mean over the seeds that finished. Configs ASHA stopped are PRUNED (a "
           "single-objective study keeps the seed-mean curve as intermediate values, so the "
           "value is the last one); configs whose every seed errored are FAIL. The fixed "
           "baseline runs (search.baseline) are not in the study. A config the sweep skips "
           "(plan.skipped) is a PRUNED trial with user attribute kdtune_skipped.")
# what the snapshot leaves out: this process's study connection, upload hook and sampler
_LIVE = ("_study", "_on_change", "sampler")
# the result keys kept per seed (Tune passes whole result dicts; the snapshot keeps only these)
_KEPT = ("epoch", "final")

TS = optuna.trial.TrialState


def open_study(sw: SweepConfig, storage: str | None, sampler, resume: bool) -> optuna.Study:
    """The sweep's study in `storage` (a database URL; None: in memory), named after the
    sweep. A new sweep refuses a study of that name the database already holds (another
    sweep's trials would mix into this one's); --resume reopens it."""
    directions = ["maximize" if m == "max" else "minimize" for m in sw.search.objectives.values()]
    name = sw.search.name
    rdb = None
    if storage is not None:
        from ..config import redact_url

        try:
            rdb = optuna.storages.RDBStorage(storage)
            held = {s.study_name: s for s in rdb.get_all_studies()}
        except Exception as e:  # noqa: BLE001 - SQLAlchemy's errors: no driver, no server
            line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if isinstance(e, ImportError) and storage.startswith(("postgres", "mysql")):
                line = ("no driver for it is installed: pip install 'kdtune[postgres]' "
                        "(psycopg) for postgresql://, or PyMySQL with mysql+pymysql://")
            raise KDTuneError(f"search.optuna_storage: cannot open {redact_url(storage)}: "
                              f"{line[:300]}") from None
        if name in held and not resume:
            n_held = len(rdb.get_all_trials(held[name]._study_id, deepcopy=False))
            raise KDTuneError(f"search.optuna_storage: {redact_url(storage)} already holds a "
                              f"study named '{name}' ({n_held} trials); give this "
                              "sweep another search.name, add --resume to continue that one, or "
                              f"delete it: optuna delete-study --study-name {name} --storage URL")
        if name in held and [d.name.lower() for d in held[name].directions] != directions:
            raise KDTuneError(f"search.optuna_storage: the study '{name}' there has directions "
                              f"{[d.name.lower() for d in held[name].directions]}, this sweep's "
                              f"objectives {directions}")
    study = optuna.create_study(storage=rdb, sampler=sampler, study_name=name,
                                directions=directions, load_if_exists=True)
    if not study.metric_names:
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, shown by dashboards
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(sw.search.objectives))
        study.set_user_attr("kdtune_sweep", name)
        study.set_user_attr("kdtune_seeds", list(sw.search.seeds))
        study.set_user_attr("kdtune_mapping", MAPPING)
    return study


def _trial_id(study: optuna.Study, number: int) -> int:
    # Optuna addresses a stored trial by an id private to its storage; kdtune keeps trial
    # numbers, which a copy of the database (another machine's --resume) keeps too
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


class SeededSearch(Searcher):
    """Optuna picks configs; each suggestion runs once per seed (Optuna is told the mean over
    the seeds) and the fixed baseline configs come first, not shown to Optuna. Unlike Ray's
    Repeater this handles several objectives, and unlike Ray's OptunaSearch it keeps the study
    in Optuna's own storage (`storage`, a database URL: optuna-dashboard and
    optuna.load_study open it while the sweep runs) and tells ASHA-stopped configs as PRUNED.

    Tune snapshots this searcher's state (its trial numbers, the seeds' last results, the
    sampler) in one file; the study in the database is always ahead of it (each ask and tell is
    written at once), so --resume reconciles the two (`reconcile`)."""

    def __init__(self, sw: SweepConfig, storage: str | None = None, resume: bool = False,
                 on_change=None):
        self.metrics = list(sw.search.objectives)
        modes = [sw.search.objectives[m] for m in self.metrics]
        metric = self.metrics if len(self.metrics) > 1 else self.metrics[0]
        mode = modes if len(modes) > 1 else modes[0]
        super().__init__(metric=metric, mode=mode)
        self.sw = sw
        self.space = optuna_space(sw)
        self.seeds = list(sw.search.seeds)
        self.fixed = [dict(b, seed=s) for b in baseline_configs(sw) for s in self.seeds]
        self.limit = n_trials(sw)
        self.issued = 0
        self.exhausted = False  # Optuna has nothing left to suggest (a grid, all tried)
        self.queue: list[dict] = []  # seed copies still to issue for the current config
        self.primary: str | None = None  # trial id the current config's group is keyed by
        # primary trial id -> {ids, number (Optuna's), params, results per seed, curves}
        self.groups: dict[str, dict] = {}
        self.owner: dict[str, str] = {}  # trial id -> primary trial id
        self.seed_of: dict[str, int] = {}  # trial id -> its seed
        self.reuse: list[int] = []  # Optuna trials asked after the snapshot (see reconcile)
        self.sampler = make_sampler(sw)
        # not pickled (Tune pickles the searcher into tuner.pkl): reopened by the live searcher
        self._study = open_study(sw, storage, self.sampler, resume) if self.space else None
        self._on_change = on_change or (lambda: None)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in _LIVE}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._study, self._on_change, self.sampler = None, lambda: None, None

    @property
    def study(self) -> optuna.Study | None:
        return self._study

    def set_search_properties(self, metric, mode, config, **spec):
        return True

    # -- asking --------------------------------------------------------------------------------

    def _ask(self) -> tuple[int, dict] | None:
        """A new config to run: a reused trial first, else Optuna's next suggestion that the
        sweep does not skip. None when a grid is used up."""
        study = self._study
        if self.reuse:
            n = self.reuse.pop(0)
            old = study.get_trials(deepcopy=False)[n]
            if old.state == TS.RUNNING:
                return n, dict(old.params)
            # it even finished after the snapshot: its trials are lost with the snapshot and run
            # again, as a new attempt that names the first (a finished trial cannot change)
            study.enqueue_trial(dict(old.params), skip_if_exists=False)
            trial = study.ask(fixed_distributions=self.space)
            trial.set_user_attr("kdtune_rerun_of", n)
            return trial.number, dict(trial.params)
        for _ in range(1000):
            if isinstance(self.sampler, optuna.samplers.GridSampler) and \
                    self.sampler.is_exhausted(study):
                return None
            trial = study.ask(fixed_distributions=self.space)
            why = skipped(self.sw, trial.params)
            if not why:
                return trial.number, dict(trial.params)
            # Optuna learns the combination is pruned and is asked again; it costs no trial
            trial.set_user_attr("kdtune_skipped", why)
            self._tell_safely(trial.number, None, TS.PRUNED)
        return None

    def suggest(self, trial_id):
        if self.issued >= self.limit:
            self._abandon_reused()
            return "FINISHED"  # Searcher.FINISHED
        if self.fixed:
            self.issued += 1
            return self.fixed.pop(0)
        if not self.queue:
            asked = self._ask() if self._study is not None else (None, {})
            if asked is None:
                self.exhausted = True
                self._abandon_reused()
                return "FINISHED"
            number, params = asked
            self.groups[trial_id] = {"ids": [], "number": number, "params": params,
                                     "results": {}, "curves": {}, "told": None}
            self.queue = [dict(params, seed=s) for s in self.seeds]
            self.primary = trial_id
            self._on_change()
        self.owner[trial_id] = self.primary
        self.groups[self.primary]["ids"].append(trial_id)
        self.seed_of[trial_id] = self.queue[0]["seed"]
        if self._study is not None:
            g = self.groups[self.primary]
            self._set_attr(g["number"], "ray_trial_ids", g["ids"])
        self.issued += 1
        return self.queue.pop(0)

    def done(self) -> bool:
        """Every trial has been handed out (after which Tune asks no more)."""
        return self.issued >= self.limit or self.exhausted

    # -- telling -------------------------------------------------------------------------------

    def _owner(self, trial_id, result) -> str | None:
        """The group `trial_id` belongs to. --resume restarts an errored trial from scratch as
        a new Tune trial (Trial.reset: a new id, its config kept) that no suggest issued: it
        takes the place of the errored seed of the group whose config it has."""
        if trial_id in self.owner or not result:
            return self.owner.get(trial_id)
        cfg = result.get("config") if isinstance(result.get("config"), dict) else \
            {k[len("config/"):]: v for k, v in result.items() if k.startswith("config/")}
        for primary, g in self.groups.items():
            if cfg.get("seed") in self.seeds and g["params"] and \
                    all(cfg.get(k) == v for k, v in g["params"].items()):
                errored = [t for t in g["ids"] if t in g["results"] and g["results"][t] is None
                           and self.seed_of.get(t, cfg["seed"]) == cfg["seed"]]
                for t in errored[:1]:
                    del g["results"][t]
                    g["curves"].pop(t, None)
                g["ids"].append(trial_id)
                self.owner[trial_id] = primary
                self.seed_of[trial_id] = cfg["seed"]
                return primary
        return None

    def on_trial_result(self, trial_id, result):
        primary = self._owner(trial_id, result)
        v = result.get(self.metrics[0])
        if primary is None or len(self.metrics) > 1 or not isinstance(v, (int, float)) or \
                result.get("epoch") is None:
            return  # Optuna keeps intermediate values for single-objective studies only
        self.groups[primary]["curves"].setdefault(trial_id, {})[int(result["epoch"])] = float(v)

    def on_trial_complete(self, trial_id, result=None, error=False):
        primary = self._owner(trial_id, result)
        if primary is None:
            return  # a baseline (or a rerun of an errored trial: its seed group is settled)
        g = self.groups[primary]
        if result and not error:
            # a result ASHA stops the trial on reaches the searcher here only, not through
            # on_trial_result
            self.on_trial_result(trial_id, result)
        # None: errored (--resume reruns it); {}: ended without a result
        g["results"][trial_id] = None if error else \
            {k: result.get(k) for k in (*self.metrics, *_KEPT)} if result else {}
        if len(g["results"]) == len(self.seeds) and self._study is not None:
            g["told"] = self._outcome(g)
            self._tell_group(g)

    def _outcome(self, g: dict) -> dict:
        """What Optuna is told of a finished seed group: COMPLETE with the seed means, PRUNED
        (ASHA stopped a seed; a single-objective study's value is then its last intermediate
        value, the seed mean at the last epoch every seed reached) or FAIL (nothing usable)."""
        done = [r for r in g["results"].values()
                if r and all(isinstance(r.get(k), (int, float)) for k in self.metrics)]
        stopped = [r for r in g["results"].values()
                   if r and not r.get("final") and r.get("epoch") is not None]
        means = {k: sum(r[k] for r in done) / len(done) for k in self.metrics} if done else {}
        curves = [c for c in g["curves"].values() if c]
        common = set.intersection(*(set(c) for c in curves)) if curves else set()
        curve = {e: sum(c[e] for c in curves) / len(curves) for e in sorted(common)}
        if stopped:
            last = {k: sum(r[k] for r in stopped if isinstance(r.get(k), (int, float)))
                    / max(1, sum(isinstance(r.get(k), (int, float)) for r in stopped))
                    for k in self.metrics if any(isinstance(r.get(k), (int, float))
                                                 for r in stopped)}
            return {"state": "PRUNED", "values": None, "curve": curve, "last": last,
                    "stopped_at": min(int(r.get("epoch") or 0) for r in stopped)}
        if not done:
            return {"state": "FAIL", "values": None, "curve": curve}
        return {"state": "COMPLETE", "values": [means[k] for k in self.metrics], "curve": curve,
                "errored_seeds": len(g["results"]) - len(done)}

    def _tell_group(self, g: dict) -> None:
        told, n = g["told"], g["number"]
        study = self._study
        tid = _trial_id(study, n)
        held = study._storage.get_trial(tid).state
        if held == TS.FAIL and told["state"] != "FAIL":
            # every seed errored, and --resume reran them: a new attempt, recorded as a new
            # trial that names the failed one (as Optuna's own RetryFailedTrialCallback does)
            g["number"] = self._re_add(g, {"kdtune_retry_of": n})
            self._on_change()
            return
        if held.is_finished():
            return  # told before a kill the snapshot did not see: the first word stands
        for epoch, v in told["curve"].items():
            study._storage.set_trial_intermediate_value(tid, int(epoch), v)
        for k, v in self._attrs(g).items():
            study._storage.set_trial_user_attr(tid, k, v)
        self._tell_safely(n, told["values"], TS[told["state"]])
        self._on_change()

    def _attrs(self, g: dict) -> dict:
        told = g.get("told") or {}
        attrs = {"ray_trial_ids": g["ids"], "seeds": self.seeds}
        if told.get("state") == "PRUNED":
            attrs.update(asha_stopped_at_epoch=told["stopped_at"], last_values=told["last"])
        if told.get("errored_seeds"):
            attrs["errored_seeds"] = told["errored_seeds"]
        return attrs

    def _tell_safely(self, number: int, values, state) -> None:
        try:
            self._study.tell(number, values, state=state, skip_if_finished=True)
        except RuntimeError as e:
            # GridSampler calls study.stop() once the grid is used up, which Optuna allows only
            # inside study.optimize; the trial's state is written before that
            if "stop" not in str(e).lower():
                raise

    def _set_attr(self, number: int, key: str, value) -> None:
        tid = _trial_id(self._study, number)
        if not self._study._storage.get_trial(tid).state.is_finished():  # else: fixed for good
            self._study._storage.set_trial_user_attr(tid, key, value)

    def _abandon_reused(self) -> None:
        """Trials kept for reuse that the sweep no longer asks for: FAIL, not left RUNNING."""
        while self.reuse and self._study is not None:
            n = self.reuse.pop(0)
            self._set_attr(n, "kdtune_abandoned", "asked before a kill; never run again")
            self._tell_safely(n, None, TS.FAIL)

    def settle(self, rows, epochs) -> None:
        """At the sweep's end, tell Optuna what trials.parquet says (`rows`: ResultsWriter's
        rows; `epochs`: its per-epoch records) of every group the study does not hold as
        finished that way. Tune's snapshot may hold a trial as finished whose end the
        searcher's state (saved earlier) never saw, and that trial does not run again after
        --resume: without this its Optuna trial would stay RUNNING, or FAIL beside a rerun
        that finished."""
        if self._study is None:
            return
        by_id = {r["trial_id"]: r for r in rows}
        for tid, r in by_id.items():
            # a trial --resume restarted as a new one (Trial.reset) that ended before any
            # snapshot recorded the searcher hearing of it: known by its config and seed
            if tid not in self.owner and not r.get("is_baseline"):
                for primary, g in self.groups.items():
                    if r.get("seed") in self.seeds and g["params"] and all(
                            _row_value(r, k) == v for k, v in g["params"].items()):
                        g["ids"].append(tid)
                        self.owner[tid], self.seed_of[tid] = primary, int(r["seed"])
                        break
        curves: dict[str, dict] = {}
        for e in epochs:
            v = e.get(self.metrics[0])
            if len(self.metrics) == 1 and isinstance(v, (int, float)) and v == v:
                curves.setdefault(e["trial_id"], {})[int(e["epoch"])] = float(v)
        for g in self.groups.values():
            last = {}  # seed -> its latest trial (a rerun replaces the errored one)
            for t in g["ids"]:
                if t in by_id:
                    last[self.seed_of.get(t)] = t
            if len(last) < len(self.seeds):
                continue
            results = {}
            for t in last.values():
                r = by_id[t]
                results[t] = None if r["status"] == "errored" else {
                    **{m: r.get(m) for m in self.metrics}, "epoch": r.get("epochs_trained"),
                    "final": r["status"] == "completed" or None}
            told = self._study._storage.get_trial(_trial_id(self._study, g["number"]))
            if results == g["results"] and told.state.is_finished():
                continue
            g["results"] = results
            g["curves"] = {t: curves[t] for t in results if t in curves}
            g["told"] = self._outcome(g)
            self._tell_group(g)

    # -- snapshot and resume -------------------------------------------------------------------

    # Tune writes save() to a temporary name and renames it: everything goes into that one file.
    def save(self, checkpoint_path):
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"version": 2, "state": self.__getstate__()}, f)

    def restore(self, checkpoint_path):
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        if saved.get("version") != 2:
            saved = {"state": _from_ray_optuna(saved)}
        old_trials = saved["state"].pop("old_trials", None)
        self.__dict__.update({k: v for k, v in saved["state"].items() if k not in _LIVE})
        if self._study is not None:
            self.reconcile(old_trials)

    def reconcile(self, old_trials=None) -> None:
        """Make the study agree with the restored state. The database was written up to the
        kill; the snapshot is older. So: a group the snapshot knows but the database lacks
        (another database, or a copy taken before the kill) is added again (told, if the
        snapshot says so); a group the snapshot told but the database holds RUNNING is told
        now; a trial the database has that the snapshot does not know was asked after the
        snapshot: the restored sampler would ask again, so the next configs reuse those
        trials instead (no duplicate, none left RUNNING). `old_trials`: a run written before
        the study moved to a database brings its in-memory study's trials."""
        study = self._study
        if old_trials and not study.trials:
            for t in old_trials:
                study.add_trial(t)
        held = {t.number: t for t in study.get_trials(deepcopy=False)}
        mine = set()
        for g in self.groups.values():
            # Tune reruns every errored trial from scratch (resume.restore_tuner): the group
            # waits for those reruns (see _owner) instead of counting the errors
            for tid in [t for t, r in g["results"].items() if r is None]:
                del g["results"][tid]
            t = held.get(g["number"])
            retry = [r for r in held.values() if r.user_attrs.get("kdtune_retry_of") == g["number"]]
            if t is None or t.params != g["params"]:
                g["number"] = self._re_add(g)
            elif retry:  # its failure was retried after the snapshot: that attempt is the group's
                mine.add(g["number"])
                g["number"] = retry[-1].number
            elif g.get("told") and t.state == TS.RUNNING:
                self._tell_group(g)
            mine.add(g["number"])
        # attempts that name an earlier one keep it out of reuse: it was run again already
        named = {t.user_attrs.get(k) for t in held.values()
                 for k in ("kdtune_retry_of", "kdtune_rerun_of")}
        self.reuse = [n for n, t in sorted(held.items()) if n not in mine and n not in named
                      and "kdtune_skipped" not in t.user_attrs
                      and "kdtune_abandoned" not in t.user_attrs]
        for n in [n for n in self.reuse if set(held[n].params) != set(self.space)]:
            # killed while Optuna was writing its suggestion (each parameter is its own write):
            # no whole config to run again
            self.reuse.remove(n)
            self._set_attr(n, "kdtune_abandoned", "killed while its config was being drawn")
            self._tell_safely(n, None, TS.FAIL)
        # The sampler is this process's, seeded with search.search_seed as at the sweep's
        # start: its first draws would repeat the sweep's first configs. What it learnt lives
        # in the study (TPE, NSGA-II and the grid read their trials from it), so only its
        # random state must move on.
        self.sampler.reseed_rng()
        self._on_change()

    def _re_add(self, g: dict, attrs: dict | None = None) -> int:
        """`g`'s config as a new trial of the study: told as the group was, or RUNNING."""
        study, told = self._study, g.get("told")
        if told is None:
            study.enqueue_trial(g["params"], skip_if_exists=False)
            return study.ask(fixed_distributions=self.space).number
        if told["state"] == "PRUNED" and told["curve"]:
            values = [told["curve"][max(told["curve"])]]
        else:
            values = told["values"]
        study.add_trial(optuna.trial.create_trial(
            params=g["params"], distributions=self.space, state=TS[told["state"]],
            values=values, intermediate_values=told["curve"] or None,
            user_attrs={**self._attrs(g), **(attrs or {})}))
        return len(study.get_trials(deepcopy=False)) - 1


def _row_value(row: dict, key: str):
    """A searched key's value as a trials.parquet row holds it (`stem` sets both stems)."""
    return row.get("student.stem") if key == STEM_SHORTHAND else row.get(key)


def _from_ray_optuna(saved: dict) -> dict:
    """The state of a run written when the study lived in Ray's OptunaSearch, in memory: its
    groups get their Optuna trial numbers, and its study's trials come along to be stored."""
    state = dict(saved["state"])
    inner = saved.get("optuna") or {}
    ot = inner.get("_ot_trials", {})
    old = inner.get("_ot_study")
    for primary, g in state.get("groups", {}).items():
        t = ot.get(state.get("inner_ids", {}).get(primary, primary))
        g.setdefault("number", t.number if t is not None else -1)
        g.setdefault("params", dict(t.params) if t is not None else {})
        g.setdefault("curves", {})
        g.setdefault("told", None)
        g.setdefault("results", {})  # old results are whole result dicts: _outcome reads keys
    state.pop("inner_ids", None)
    state.pop("inner", None)
    state.setdefault("reuse", [])
    state["old_trials"] = old.get_trials(deepcopy=True) if old is not None else []
    return state


def make_searcher(sw: SweepConfig, storage: str | None = None, resume: bool = False,
                  on_change=None) -> SeededSearch:
    return SeededSearch(sw, storage, resume, on_change)
