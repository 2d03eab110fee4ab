"""The sweep's Optuna study in Optuna's own storage (kdtune.sweep.space.SeededSearch): one
Optuna trial per searched config, told the seed mean, PRUNED when ASHA stopped it, FAIL when
every seed errored; a snapshot + kill + --resume leaves no RUNNING trial and no duplicate, also
when the database is another machine's copy or a fresh one. Driven through the searcher's Tune
interface (suggest / on_trial_result / on_trial_complete / save / restore) against real SQLite
files, without a sweep: tests/test_sweep.py checks the same against real sweeps.
"""

from __future__ import annotations

import json
import shutil
import wsgiref.util

import optuna
import pytest

from kdtune.config import sweep_config
from kdtune.errors import KDTuneError
from kdtune.sweep.space import SeededSearch

TS = optuna.trial.TrialState
SPACE = {"kd.temperature": {"type": "loguniform", "low": 1, "high": 16},
         "kd.alpha": {"type": "uniform", "low": 0.1, "high": 0.9}}


def sweep(name="study", **search):
    return sweep_config({"search": {"name": name, "space": SPACE, "seeds": [0, 1],
                                    "num_samples": 4, **search}})


def db(tmp_path, name="optuna.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def run_group(search: SeededSearch, ids: tuple[str, str], curves, last: dict | None):
    """Issue one config's two seed trials and report `curves` (per seed: val_acc per epoch);
    `last`: per seed the final result (None: the seed errored)."""
    cfgs = [search.suggest(i) for i in ids]
    for tid, curve in zip(ids, curves):
        for epoch, v in enumerate(curve, 1):
            search.on_trial_result(tid, {"epoch": epoch, "val_acc": v})
    for tid, res in zip(ids, last):
        search.on_trial_complete(tid, res, error=res is None)
    return cfgs


def test_one_optuna_trial_per_config_told_the_seed_mean_pruned_or_failed(tmp_path):
    url = db(tmp_path)
    search = SeededSearch(sweep(), url)
    a = run_group(search, ("t1", "t2"), [[0.3, 0.5], [0.4, 0.6]],
                  [{"epoch": 2, "val_acc": 0.5, "final": True},
                   {"epoch": 2, "val_acc": 0.6, "final": True}])
    assert a[0]["seed"] == 0 and a[1]["seed"] == 1
    assert {k: v for k, v in a[0].items() if k != "seed"} == \
        {k: v for k, v in a[1].items() if k != "seed"}
    # ASHA stopped seed 1 after epoch 1: PRUNED, its value the seed mean at epoch 1
    run_group(search, ("t3", "t4"), [[0.2, 0.25], [0.1]],
              [{"epoch": 2, "val_acc": 0.25, "final": True}, {"epoch": 1, "val_acc": 0.1}])
    run_group(search, ("t5", "t6"), [[], []], [None, None])
    # opened by Optuna's own API, from the file alone
    study = optuna.load_study(study_name="study", storage=url)
    t = study.trials
    assert [x.state for x in t] == [TS.COMPLETE, TS.PRUNED, TS.FAIL]
    assert t[0].value == pytest.approx(0.55)
    assert t[0].intermediate_values == pytest.approx({1: 0.35, 2: 0.55})
    assert t[1].value == pytest.approx(0.15) and t[1].user_attrs["asha_stopped_at_epoch"] == 1
    assert t[0].user_attrs["ray_trial_ids"] == ["t1", "t2"]
    assert t[0].params == {k: v for k, v in a[0].items() if k != "seed"}
    assert study.metric_names == ["val_acc"]
    assert "one Optuna trial per searched config" in study.user_attrs["kdtune_mapping"]


def test_baselines_stay_out_of_the_study(tmp_path):
    search = SeededSearch(sweep(baseline=True), db(tmp_path))
    issued = [search.suggest(f"b{i}") for i in range(4)]  # alpha 0 and its KD twin x 2 seeds
    assert all("__baseline" in str(c) or "kd.alpha" in c for c in issued)
    for i in range(4):
        search.on_trial_complete(f"b{i}", {"val_acc": 0.5, "final": True})
    assert search.study.trials == []
    search.suggest("t1")
    assert len(search.study.trials) == 1


def test_multi_objective_study_keeps_its_directions(tmp_path):
    url = db(tmp_path)
    search = SeededSearch(sweep(objectives={"val_acc": "max", "flops": "min"}), url)
    run_group(search, ("t1", "t2"), [[], []], [{"val_acc": 0.5, "flops": 2e7, "final": True},
                                              {"val_acc": 0.7, "flops": 2e7, "final": True}])
    run_group(search, ("t3", "t4"), [[], []], [{"epoch": 1, "val_acc": 0.2, "flops": 3e7},
                                              {"val_acc": 0.4, "flops": 3e7, "final": True}])
    study = optuna.load_study(study_name="study", storage=url)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_acc", "flops"]
    assert study.trials[0].values == pytest.approx([0.6, 2e7])
    assert study.trials[1].state == TS.PRUNED  # multi-objective: no value, its last values kept
    assert study.trials[1].user_attrs["last_values"] == pytest.approx({"val_acc": 0.2,
                                                                       "flops": 3e7})


def test_a_new_sweep_refuses_a_study_the_database_already_holds(tmp_path):
    url = db(tmp_path)
    SeededSearch(sweep(), url).suggest("t1")
    with pytest.raises(KDTuneError, match="already holds a study named 'study'.*--resume"):
        SeededSearch(sweep(), url)
    SeededSearch(sweep(), url, resume=True)  # --resume reopens it
    with pytest.raises(KDTuneError, match="cannot open"):
        SeededSearch(sweep(), f"sqlite:///{tmp_path}/no/such/dir/x.db")


def snapshot_then_kill(tmp_path, url):
    """A searcher that snapshots after its first config finished and its second started, then
    goes on (the second finishes, a third is asked) until a kill: what the database holds is
    ahead of the snapshot."""
    search = SeededSearch(sweep(), url)
    run_group(search, ("t1", "t2"), [[0.3], [0.4]],
              [{"epoch": 1, "val_acc": 0.3, "final": True},
               {"epoch": 1, "val_acc": 0.4, "final": True}])
    search.suggest("t3")
    search.suggest("t4")
    snap = tmp_path / "searcher-state.pkl"
    search.save(snap)
    search.on_trial_complete("t3", {"epoch": 1, "val_acc": 0.5, "final": True})
    search.on_trial_complete("t4", {"epoch": 1, "val_acc": 0.7, "final": True})
    third = search.suggest("t5")
    return snap, third


def finish(search: SeededSearch, start: int) -> None:
    i = start
    while True:
        cfg = search.suggest(f"r{i}")
        if not isinstance(cfg, dict):
            return
        search.on_trial_complete(f"r{i}", {"epoch": 1, "val_acc": 0.1 * (i % 7),
                                           "final": True})
        i += 1


def test_resume_after_a_kill_reuses_trials_asked_after_the_snapshot(tmp_path):
    url = db(tmp_path)
    snap, third = snapshot_then_kill(tmp_path, url)
    assert [t.state for t in optuna.load_study(study_name="study", storage=url).trials] == \
        [TS.COMPLETE, TS.COMPLETE, TS.RUNNING]
    # --resume: Tune reruns t3/t4 (unfinished in its snapshot) and asks for more configs
    search = SeededSearch(sweep(), url, resume=True)
    search.restore(snap)
    run_group_again = [search.suggest("t3b"), search.suggest("t4b")]
    search.on_trial_complete("t3", {"epoch": 1, "val_acc": 0.5, "final": True})
    search.on_trial_complete("t4", {"epoch": 1, "val_acc": 0.7, "final": True})
    first_new = run_group_again[0]
    assert {k: v for k, v in first_new.items() if k != "seed"} == \
        {k: v for k, v in third.items() if k != "seed"}  # the trial asked after the snapshot
    for tid in ("t3b", "t4b"):
        search.on_trial_complete(tid, {"epoch": 1, "val_acc": 0.2, "final": True})
    finish(search, 0)
    study = optuna.load_study(study_name="study", storage=url)
    assert [t.state for t in study.trials] == [TS.COMPLETE] * 4  # num_samples, no duplicate
    assert study.trials[1].value == pytest.approx(0.6)
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 4


def test_resume_elsewhere_rebuilds_what_its_database_lacks(tmp_path):
    url = db(tmp_path)
    snap, _ = snapshot_then_kill(tmp_path, url)
    # another machine: an older copy of the database (taken at the snapshot's time would be
    # the same; an empty one is the extreme), at another path
    other = db(tmp_path, "elsewhere.db")
    search = SeededSearch(sweep(), other, resume=True)
    search.restore(snap)
    study = optuna.load_study(study_name="study", storage=other)
    assert [t.state for t in study.trials] == [TS.COMPLETE, TS.RUNNING]
    assert study.trials[0].value == pytest.approx(0.35)
    search.on_trial_complete("t3", {"epoch": 1, "val_acc": 0.5, "final": True})
    search.on_trial_complete("t4", {"epoch": 1, "val_acc": 0.7, "final": True})
    finish(search, 0)
    assert [t.state for t in study.trials] == [TS.COMPLETE] * 4

    # the same database copied to another path is the same study
    shutil.copy(tmp_path / "optuna.db", tmp_path / "copy.db")
    again = SeededSearch(sweep(), db(tmp_path, "copy.db"), resume=True)
    again.restore(snap)
    assert len(again.study.trials) == 3 and again.reuse == [2]


def test_optuna_dashboard_opens_the_study(tmp_path):
    from optuna_dashboard import wsgi

    url = db(tmp_path)
    search = SeededSearch(sweep(), url)
    run_group(search, ("t1", "t2"), [[0.3], [0.4]],
              [{"epoch": 1, "val_acc": 0.3, "final": True},
               {"epoch": 1, "val_acc": 0.4, "final": True}])
    app = wsgi(url)

    def get(path):
        env = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
        wsgiref.util.setup_testing_defaults(env)
        status = []
        body = b"".join(app(env, lambda s, h, *a: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:300])
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == ["study"]
    detail = get(f"/api/studies/{studies[0]['study_id']}")
    assert [t["state"] for t in detail["trials"]] == ["Complete"]
    assert detail["trials"][0]["values"] == pytest.approx([0.35])


def test_a_run_from_before_the_database_resumes_with_its_study(tmp_path):
    """Runs started before the study moved to a database snapshotted Ray's OptunaSearch (its
    in-memory study pickled with it): --resume stores that study's trials and goes on."""
    import pickle

    from ray.tune.search.optuna import OptunaSearch

    from kdtune.sweep.space import make_sampler, optuna_space

    sw = sweep()
    inner = OptunaSearch(space=optuna_space(sw), metric="val_acc", mode="max",
                         sampler=make_sampler(sw), seed=0)
    done, running = inner.suggest("t1"), inner.suggest("t3")
    inner.on_trial_complete("t1", {"val_acc": 0.45})
    state = {"metrics": ["val_acc"], "seeds": [0, 1], "fixed": [], "limit": 8, "issued": 3,
             "exhausted": False, "queue": [dict(running, seed=1)], "primary": "t3",
             "groups": {"t1": {"ids": ["t1", "t2"], "results": {"t1": {"val_acc": 0.4},
                                                                "t2": {"val_acc": 0.5}}},
                        "t3": {"ids": ["t3"], "results": {}}},
             "owner": {"t1": "t1", "t2": "t1", "t3": "t3"}, "inner_ids": {"t1": "t1", "t3": "t3"}}
    snap = tmp_path / "old.pkl"
    snap.write_bytes(pickle.dumps({"state": state, "optuna": inner.__dict__.copy()}))
    url = db(tmp_path)
    search = SeededSearch(sw, url, resume=True)
    search.restore(snap)
    study = optuna.load_study(study_name="study", storage=url)
    assert [t.state for t in study.trials] == [TS.COMPLETE, TS.RUNNING]
    assert study.trials[0].params == done and study.trials[1].params == running
    assert search.suggest("t4") == dict(running, seed=1)  # the queued seed copy
    search.on_trial_complete("t3", {"epoch": 1, "val_acc": 0.2, "final": True})
    search.on_trial_complete("t4", {"epoch": 1, "val_acc": 0.4, "final": True})
    finish(search, 0)
    states = [t.state for t in optuna.load_study(study_name="study", storage=url).trials]
    assert states == [TS.COMPLETE] * 4


def test_errored_config_rerun_by_resume_is_a_new_attempt_naming_the_failed_one(tmp_path):
    url = db(tmp_path)
    search = SeededSearch(sweep(), url)
    cfgs = run_group(search, ("t1", "t2"), [[], []], [None, None])
    assert search.study.trials[0].state == TS.FAIL
    search.save(tmp_path / "snap.pkl")
    search = SeededSearch(sweep(), url, resume=True)
    search.restore(tmp_path / "snap.pkl")
    # --resume restarts both from scratch as new Tune trials (Trial.reset: new ids, same
    # config); Tune passes flattened results, config included
    for new, cfg, acc in zip(("t1r", "t2r"), cfgs, (0.4, 0.6)):
        flat = {f"config/{k}": v for k, v in cfg.items()}
        search.on_trial_result(new, {**flat, "epoch": 1, "val_acc": acc})
        search.on_trial_complete(new, {**flat, "epoch": 1, "val_acc": acc, "final": True})
    t = optuna.load_study(study_name="study", storage=url).trials
    assert [x.state for x in t] == [TS.FAIL, TS.COMPLETE]
    assert t[1].params == t[0].params and t[1].value == pytest.approx(0.5)
    assert t[1].user_attrs["kdtune_retry_of"] == 0
    assert t[1].user_attrs["ray_trial_ids"] == ["t1", "t2", "t1r", "t2r"]


def test_settle_tells_what_trials_parquet_says_of_groups_the_searcher_never_saw_end(tmp_path):
    """Tune's snapshot can hold a trial as finished whose end the searcher state saved with it
    missed; it never runs again, so the sweep's end tells Optuna from the table."""
    url = db(tmp_path)
    search = SeededSearch(sweep(), url)
    cfgs = [search.suggest(t) for t in ("t1", "t2")]
    run_group(search, ("t3", "t4"), [[0.3], [0.5]],
              [{"epoch": 1, "val_acc": 0.3, "final": True},
               {"epoch": 1, "val_acc": 0.5, "final": True}])
    rows = [{"trial_id": "t1", "status": "stopped", "epochs_trained": 2, "val_acc": 0.2},
            {"trial_id": "t2", "status": "completed", "epochs_trained": 4, "val_acc": 0.6},
            {"trial_id": "t3", "status": "completed", "epochs_trained": 1, "val_acc": 0.3},
            {"trial_id": "t4", "status": "completed", "epochs_trained": 1, "val_acc": 0.5}]
    epochs = [{"trial_id": "t1", "epoch": 1, "val_acc": 0.1},
              {"trial_id": "t1", "epoch": 2, "val_acc": 0.2},
              *({"trial_id": "t2", "epoch": e, "val_acc": 0.1 * e} for e in range(1, 5))]
    assert cfgs[0]["seed"] == 0
    search.settle(rows, epochs)
    t = optuna.load_study(study_name="study", storage=url).trials
    assert [x.state for x in t] == [TS.PRUNED, TS.COMPLETE]
    assert t[0].value == pytest.approx((0.2 + 0.2) / 2)  # seed mean at epoch 2, both reached
    assert t[0].intermediate_values == pytest.approx({1: 0.1, 2: 0.2})
    assert t[1].value == pytest.approx(0.4)
    search.settle(rows, epochs)  # nothing left to tell: no error, no change
    assert len(optuna.load_study(study_name="study", storage=url).trials) == 2


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real PostgreSQL server (pgserver ships its binaries), as a cluster's database."""
    import warnings

    pgserver = pytest.importorskip("pgserver", reason="the dev extra installs pgserver")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XDG_RUNTIME_DIR unset in CI
        srv = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    yield srv.get_uri()
    srv.cleanup()


def test_postgresql_storage_holds_the_study_and_resumes_it(postgres, tmp_path):
    """search.optuna_storage at PostgreSQL: the same study, reopened by another process's
    searcher after a kill (snapshot behind the database), with nothing left RUNNING."""
    sw = sweep(name="pg")
    search = SeededSearch(sw, postgres)
    run_group(search, ("t1", "t2"), [[0.3], [0.4]],
              [{"epoch": 1, "val_acc": 0.3, "final": True},
               {"epoch": 1, "val_acc": 0.4, "final": True}])
    search.suggest("t3")
    search.save(tmp_path / "snap.pkl")
    search.suggest("t4")
    search.suggest("t5")  # asked after the snapshot, then killed
    again = SeededSearch(sw, postgres, resume=True)
    again.restore(tmp_path / "snap.pkl")
    assert again.reuse == [2]
    again.on_trial_complete("t3", {"epoch": 1, "val_acc": 0.5, "final": True})  # Tune resumes it
    finish(again, 0)
    study = optuna.load_study(study_name="pg", storage=postgres)
    assert [t.state for t in study.trials][:1] == [TS.COMPLETE]
    assert TS.RUNNING not in {t.state for t in study.trials}
    assert len(study.trials) == 4
    with pytest.raises(KDTuneError, match="already holds a study named 'pg'"):
        SeededSearch(sw, postgres)


def test_database_passwords_stay_out_of_what_is_shown():
    from kdtune.config import check_optuna_storage, redact_url

    assert redact_url("postgresql://kd:s3cret@db:5432/optuna") == \
        "postgresql://kd:***@db:5432/optuna"
    assert redact_url("sqlite:////abs/optuna.db") == "sqlite:////abs/optuna.db"
    with pytest.raises(KDTuneError, match=r"search.optuna_storage: 'redis://u:\*\*\*@h/0' "
                                          "is not a database URL"):
        check_optuna_storage("redis://u:s3cret@h/0")
    with pytest.raises(KDTuneError) as e:
        SeededSearch(sweep(), "mysql+nosuchdriver://u:s3cret@127.0.0.1/db")
    assert "s3cret" not in str(e.value) and "cannot open" in str(e.value)


def test_a_config_finished_after_the_snapshot_runs_again_as_an_attempt_naming_it(tmp_path):
    url = db(tmp_path)
    snap, third = snapshot_then_kill(tmp_path, url)
    # the killed process had even finished the third config before the kill
    optuna.load_study(study_name="study", storage=url).tell(2, 0.9)
    again = SeededSearch(sweep(), url, resume=True)
    again.restore(snap)
    assert again.reuse == [2]
    again.on_trial_complete("t3", {"epoch": 1, "val_acc": 0.5, "final": True})
    again.on_trial_complete("t4", {"epoch": 1, "val_acc": 0.7, "final": True})
    cfg = again.suggest("n1")
    assert {k: v for k, v in cfg.items() if k != "seed"} == \
        {k: v for k, v in third.items() if k != "seed"}
    again.on_trial_complete("n1", {"epoch": 1, "val_acc": 0.8, "final": True})
    finish(again, 0)
    t = optuna.load_study(study_name="study", storage=url).trials
    rerun = [x for x in t if x.user_attrs.get("kdtune_rerun_of") == 2]
    assert len(rerun) == 1 and rerun[0].params == t[2].params
    assert TS.RUNNING not in {x.state for x in t}
    # a second resume does not run it a third time
    again.save(tmp_path / "snap2.pkl")
    last = SeededSearch(sweep(), url, resume=True)
    last.restore(tmp_path / "snap2.pkl")
    assert last.reuse == []


def test_a_trial_killed_half_drawn_is_failed_not_run(tmp_path):
    """Optuna writes a new trial and then each of its parameters: a kill in between leaves a
    RUNNING trial without a whole config, which --resume must not run as a config."""
    url = db(tmp_path)
    search = SeededSearch(sweep(), url)
    search.suggest("t1")
    search.save(tmp_path / "snap.pkl")
    search.study._storage.create_new_trial(search.study._study_id)  # asked, no params yet
    again = SeededSearch(sweep(), url, resume=True)
    again.restore(tmp_path / "snap.pkl")
    assert again.reuse == []
    t = optuna.load_study(study_name="study", storage=url).trials
    assert t[1].state == TS.FAIL and "kdtune_abandoned" in t[1].user_attrs
    assert set(again.suggest("t2")) == {"kd.temperature", "kd.alpha", "seed"}


def test_settle_finds_a_rerun_the_searcher_never_heard_of_by_its_config(tmp_path):
    url = db(tmp_path)
    search = SeededSearch(sweep(seeds=[0]), url)
    cfg = run_group(search, ("t1",), [[]], [None])[0]
    assert search.study.trials[0].state == TS.FAIL
    # --resume restarted t1 as t9 (Trial.reset), which finished before any snapshot the
    # searcher state was saved with: only trials.parquet knows it
    row = {**{k: v for k, v in cfg.items()}, "trial_id": "t9", "status": "completed",
           "epochs_trained": 2, "val_acc": 0.45, "is_baseline": False, "seed": 0.0}
    search.settle([row], [{"trial_id": "t9", "epoch": 2, "val_acc": 0.45}])
    t = optuna.load_study(study_name="study", storage=url).trials
    assert [x.state for x in t] == [TS.FAIL, TS.COMPLETE]
    assert t[1].user_attrs["kdtune_retry_of"] == 0 and t[1].value == pytest.approx(0.45)
