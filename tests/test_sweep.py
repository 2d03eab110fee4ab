"""Sweeps end to end: real Ray Tune sweeps on synthetic data with a local Ray on this machine's
CPUs, each run through the `kdtune` command line in its own process (as `make sweep` runs it).

* one sweep (cnn4/resnet8 students, stem choice so two teachers, two seeds, no-KD baselines) runs
  once for the module; many tests check its outputs;
* one sweep is killed (SIGKILL) after a trial errored, resumed and interrupted with Ctrl+C,
  resumed again: it must end with every planned trial exactly once, finished ones kept;
* bad search spaces end `kdtune validate` and `kdtune sweep` with one line and exit code 2.

Everything lives under pytest's tmp folders (teacher cache included). About 2.5 minutes on 2 CPUs.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from kdtune.cli import main
from kdtune.config import load_sweep_config
from kdtune.errors import KDTuneError
from kdtune.models import architecture_signature, load_student
from kdtune.results import CONFIG_COLUMNS
from kdtune.sweep import n_trials

BASE = {
    "data": {"dataset": "synthetic", "val_size": 100, "synthetic_train": 500,
             "synthetic_test": 100},
    "teacher": {"arch": "cnn4", "stem": "cifar", "epochs": 2, "batch_size": 64},
    "student": {"arch": "cnn4", "stem": "cifar"},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.05},
    "kd": {"temperature": 4, "alpha": 0.9},
    "prune": {"ratio": 0.3, "finetune_epochs": 1},
    # ONNX export and onnxruntime measurement only where a test asks for it (the main sweep):
    # each student costs an export, a quantization and two evaluations
    "measure": {"runs": 3, "warmup": 1, "throughput_batch": 16, "onnx": False},
}
EPOCHS = 3 + 1  # train + fine-tune: what a trial that is not stopped runs

MAIN_SEARCH = {
    "name": "main",
    "space": {
        "kd.temperature": {"type": "loguniform", "low": 1, "high": 16},
        "kd.alpha": {"type": "uniform", "low": 0.1, "high": 0.95},
        "prune.ratio": {"type": "uniform", "low": 0.1, "high": 0.5, "step": 0.1},
        "prune.method": {"type": "choice", "values": ["unstructured", "channel"]},
        "student.arch": {"type": "choice", "values": ["cnn4", "resnet8"]},
        "stem": {"type": "choice", "values": ["standard", "cifar"]},
    },
    "num_samples": 6,
    "max_concurrent": 2,
    "seeds": [0, 1],
    "baseline": True,
    "search_seed": 0,
    # reduction factor 3: a trial below the top third of its rung stops; with ~6 KD trials per
    # architecture some are stopped (deterministic on CPU, checked over repeated runs)
    "asha": {"grace_period": 1, "reduction_factor": 3},
}
# (6 sampled configs + 2 archs x 2 stems x (alpha 0 + its KD twin) baselines) x 2 seeds
MAIN_PLANNED = (6 + 2 * 2 * 2) * 2

RESUME_SEARCH = {
    "name": "resume",
    "space": {
        "kd.temperature": {"type": "loguniform", "low": 1, "high": 16},
        "kd.alpha": {"type": "uniform", "low": 0.1, "high": 0.95},
        "student.arch": {"type": "choice", "values": ["cnn4", "resnet8"]},
    },
    "num_samples": 7,
    "max_concurrent": 2,
    "seeds": [0],
    "search_seed": 1,
    "asha": {"grace_period": 1, "reduction_factor": 2},
    # the injected failure must end its trial errored (and --resume rerun it), not be retried
    # in place (tests/test_node_loss.py covers restarts)
    "max_failures": 0,
    # a checkpoint (and so a forced snapshot) every epoch: what the kills below cut into is
    # then the last epoch, as these tests were written for (the default, 20 s, is coarser)
    "checkpoint_every_s": 0,
}
RESUME_PLANNED = 7
CONFIG_KEYS = ["kd.temperature", "kd.alpha", "student.arch", "student.stem", "prune.ratio",
               "prune.method"]

SWEEP_TIMEOUT = 300


def write_sweep(folder: Path, search: dict, cache: Path, **base_changes) -> Path:
    raw = copy.deepcopy(BASE)
    raw.update(base_changes)
    raw["cache_dir"] = str(cache)
    raw["search"] = copy.deepcopy(search)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{search['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray, always
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def kdtune_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "kdtune.cli", *map(str, args)]


def read_trials(run_dir: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(run_dir / "trials.parquet")
    except (OSError, ValueError):  # not written yet
        return pd.DataFrame(columns=["trial_id", "status"])


# --- the module's sweep ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """One real sweep for every test of its outputs."""
    tmp = tmp_path_factory.mktemp("sweep")
    space = write_sweep(tmp, MAIN_SEARCH, tmp / "cache", measure={**BASE["measure"], "onnx": True})
    out = tmp / "run"
    t0 = time.time()
    proc = subprocess.run(kdtune_cmd("sweep", space, "--out", out), capture_output=True,
                          text=True, env=cli_env(), timeout=SWEEP_TIMEOUT)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sw = load_sweep_config(out / "sweep.yaml")
    return SimpleNamespace(
        dir=out, space=space, stdout=proc.stdout, stderr=proc.stderr, wall=wall, sw=sw,
        trials=pd.read_parquet(out / "trials.parquet"),
        epochs=pd.read_parquet(out / "epochs.parquet"),
        asha=json.loads((out / "asha_rungs.json").read_text()),
        teachers=json.loads((out / "teachers.json").read_text()),
        cache=tmp / "cache")


def kd_trials(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["is_baseline"].astype(bool)]


def test_sweep_plans_and_records_one_complete_row_per_trial(sweep_run):
    df = sweep_run.trials
    assert n_trials(sweep_run.sw) == MAIN_PLANNED
    assert len(df) == MAIN_PLANNED
    assert df["trial_id"].is_unique
    assert set(df["status"]) <= {"completed", "stopped"}, df.loc[df["status"] == "errored",
                                                                  "error"].tolist()
    assert df[list(CONFIG_COLUMNS) + ["group", "data.label"]].notna().all().all()
    # the ASHA cost group: architecture, stem and input size
    assert (df["group"] == df["student.arch"] + "|" + df["student.stem"] + "|32px").all()
    done = df[df["status"] == "completed"]
    metrics = ["val_acc", "test_acc", "teacher_test_acc", "latency_ms_b1_cpu",
               "throughput_ips_cpu", "size_mb_dense", "size_mb_sparse", "params",
               "nonzero_params", "flops", "sparsity_pruned", "wall_s", "git_sha",
               "torch_version", "ray_version", "optuna_version"]
    kd_done = done[~done["is_baseline"].astype(bool)]
    assert done[[m for m in metrics if m != "teacher_test_acc"]].notna().all().all()
    assert kd_done["teacher_test_acc"].notna().all()
    assert done["val_acc"].between(0, 1).all() and done["test_acc"].between(0, 1).all()
    assert (done["latency_ms_b1_cpu"] > 0).all()
    assert (done["epochs_trained"] == EPOCHS).all()
    # pruning happened at the searched ratio (a step grid of 0.1): weights zeroed
    # (unstructured), channels removed (channel, widths rounded to multiples of 8)
    unstructured = done[done["prune.method"] == "unstructured"]
    assert (unstructured["sparsity_pruned"] - unstructured["prune.ratio"]).abs().max() < 0.02
    assert (unstructured["prune_ratio_achieved"] == unstructured["sparsity_pruned"]).all()
    channel = done[done["prune.method"] == "channel"]
    assert (channel["sparsity_pruned"] == 0).all()
    assert (channel["prune_ratio_achieved"] - channel["prune.ratio"]).abs().max() < 0.3
    stopped = df[df["status"] == "stopped"]
    assert stopped["test_acc"].isna().all()
    assert (stopped["epochs_trained"] < EPOCHS).all() and (stopped["epochs_trained"] >= 1).all()
    assert stopped["checkpoint"].isna().all()


def test_every_sampled_value_lies_in_its_declared_range(sweep_run):
    space = yaml.safe_load(sweep_run.space.read_text())["search"]["space"]
    kd = kd_trials(sweep_run.trials)
    assert len(kd) == MAIN_SEARCH["num_samples"] * len(MAIN_SEARCH["seeds"])
    for key, spec in space.items():
        cols = ["teacher.stem", "student.stem"] if key == "stem" else [key]
        for col in cols:
            values = kd[col]
            if spec["type"] == "choice":
                assert set(values) <= set(spec["values"]), (key, set(values))
            else:
                assert values.between(spec["low"], spec["high"]).all(), (key, values.tolist())
            if spec.get("step"):
                k = (values - spec["low"]) / spec["step"]
                assert (k - k.round()).abs().max() < 1e-6, (key, values.tolist())
    assert (kd["teacher.stem"] == kd["student.stem"]).all()  # `stem` sets both
    # the sampler explored: more than one value of each searched key
    for col in ("kd.temperature", "kd.alpha", "student.arch", "student.stem", "prune.method"):
        assert kd[col].nunique() > 1, col


def test_each_sampled_config_runs_once_per_seed(sweep_run):
    kd = kd_trials(sweep_run.trials).copy()
    kd["key"] = list(zip(*(kd[c].round(12) if kd[c].dtype.kind == "f" else kd[c]
                           for c in CONFIG_KEYS)))
    per_config = kd.groupby("key")["seed"].apply(sorted)
    assert len(per_config) == MAIN_SEARCH["num_samples"]
    assert all(seeds == MAIN_SEARCH["seeds"] for seeds in per_config), per_config


def test_baselines_are_alpha_0_and_its_kd_twin_per_arch_stem_seed_never_stopped(sweep_run):
    base = sweep_run.trials[sweep_run.trials["is_baseline"].astype(bool)]
    assert (base["status"] == "completed").all()
    combos = sorted(zip(base["student.arch"], base["student.stem"], base["seed"],
                        base["kd.alpha"]))
    assert combos == sorted((a, s, seed, alpha) for a in ("cnn4", "resnet8")
                            for s in ("standard", "cifar") for seed in (0, 1)
                            for alpha in (0.0, 0.9))
    # twins: equal in every config key but alpha (the base config's values)
    others = [c for c in CONFIG_COLUMNS if c not in ("kd.alpha", "seed", "student.arch",
                                                     "student.stem", "teacher.stem")]
    for _, pair in base.groupby(["student.arch", "student.stem", "seed"]):
        assert len(pair) == 2 and (pair[others].nunique(dropna=False) == 1).all()
    in_rungs = {t for rungs in sweep_run.asha["rungs"].values() for ids in rungs.values()
                for t in ids}
    assert not in_rungs & set(base["trial_id"])


def test_asha_stopped_trials_and_never_across_architectures(sweep_run):
    df = sweep_run.trials.set_index("trial_id")
    rungs, stops = sweep_run.asha["rungs"], sweep_run.asha["stops"]
    stopped = set(df.index[df["status"] == "stopped"])
    assert stopped, "ASHA stopped no trial"
    assert sweep_run.asha["group_by"] == ["student.arch", "student.stem", "data.resize"]
    # 6 sampled configs over 4 groups: not every group need get one
    assert 2 <= len(rungs) and set(rungs) <= {f"{a}|{s}|32px" for a in ("cnn4", "resnet8")
                                              for s in ("standard", "cifar")}
    for group, by_milestone in rungs.items():
        arch, stem, _ = group.split("|")
        for milestone, ids in by_milestone.items():
            assert ids and set(ids) <= set(df.index), (group, milestone)
            # never a standard-stem trial judged against a CIFAR-stem one, nor across archs
            assert (df.loc[ids, "student.arch"] == arch).all(), (group, milestone, ids)
            assert (df.loc[ids, "student.stem"] == stem).all(), (group, milestone, ids)
    assert {s["trial_id"] for s in stops} == stopped
    for s in stops:
        row = df.loc[s["trial_id"]]
        assert s["group"] == row["group"]
        assert s["epoch"] == row["epochs_trained"]
        # judged at a rung of its own group, where its result was recorded
        assert s["trial_id"] in rungs[s["group"]][str(float(s["epoch"]))]


def test_each_teacher_prepared_exactly_once(sweep_run):
    teachers = sweep_run.teachers
    assert sorted(t["stem"] for t in teachers) == ["cifar", "standard"]
    assert len({t["key"] for t in teachers}) == 2
    assert all(t["arch"] == "cnn4" and not t["cache_hit"] for t in teachers)  # fresh cache
    # the cache holds exactly those two: no trial trained a teacher of its own
    cached = sorted(p.name for p in (sweep_run.cache / "teachers").iterdir() if p.is_dir())
    assert cached == sorted(t["key"] for t in teachers)
    assert sweep_run.stdout.count("preparing 2 teacher(s)") == 1
    by_stem = {t["stem"]: t for t in teachers}
    kd_done = kd_trials(sweep_run.trials)
    kd_done = kd_done[kd_done["status"] == "completed"]
    assert not kd_done.empty
    for _, r in kd_done.iterrows():
        t = by_stem[r["teacher.stem"]]
        assert r["teacher_test_acc"] == pytest.approx(t["test_acc"])
        assert r["teacher_train_s"] == pytest.approx(t["train_s"])


def test_completed_checkpoints_reload_with_load_student(sweep_run):
    done = sweep_run.trials[sweep_run.trials["status"] == "completed"]
    for _, r in done.iterrows():
        path = Path(r["checkpoint"])
        assert path.is_file() and path.parent == sweep_run.dir / "checkpoints"
        model = load_student(path)  # channel-pruned ones narrower than create_model builds
        state = torch.load(path, weights_only=True)["state_dict"]
        assert not any(k.endswith(("_orig", "_mask")) for k in state)  # pruning permanent
        assert int(r["params"]) == sum(p.numel() for p in model.parameters())
        assert architecture_signature(model, r["student.arch"], r["student.stem"], 32) == \
            r["arch_signature"]
    assert len(list((sweep_run.dir / "checkpoints").glob("*.pt"))) == len(done)


def test_students_that_deploy_alike_share_one_latency_measurement(sweep_run):
    done = sweep_run.trials[sweep_run.trials["status"] == "completed"]
    cols = ["latency_ms_b1_cpu", "latency_ms_b1_cpu_p10", "latency_ms_b1_cpu_p90",
            "throughput_ips_cpu"]
    assert (done["latency_ms_b1_cpu_p10"] <= done["latency_ms_b1_cpu"]).all()
    assert (done["latency_ms_b1_cpu"] <= done["latency_ms_b1_cpu_p90"]).all()
    groups = done.groupby("arch_signature")
    assert (groups[cols].nunique() == 1).all().all()  # one measurement per signature
    assert (groups.size() == groups["latency_shared_by"].first()).all()
    # unstructured pruning keeps the dense signature: every unstructured student of one arch
    # and stem deploys as the same network; channel pruning gives narrower, distinct ones
    unstructured = done[done["prune.method"] == "unstructured"]
    assert (unstructured.groupby(["student.arch", "student.stem"])["arch_signature"]
            .nunique() == 1).all()
    channel = done[done["prune.method"] == "channel"]
    assert not set(channel["arch_signature"]) & set(unstructured["arch_signature"])
    n = done["arch_signature"].nunique()
    assert f"measuring latency of {n} distinct networks ({len(done)} completed students)" \
        in sweep_run.stdout
    # measure.onnx: onnxruntime latency shared the same way, fp32 and INT8 ...
    onnx = ["latency_ms_b1_onnx_fp32", "latency_ms_b1_onnx_fp32_p90", "latency_ms_b1_onnx_int8",
            "latency_ms_b1_onnx_int8_p10", "onnx_device"]
    assert done[onnx].notna().all().all() and (groups[onnx].nunique() == 1).all().all()
    assert done["onnx_device"].str.endswith("1 thread").all()
    # ... and each student's own INT8 file: sizes and accuracies per trial
    per_trial = ["size_mb_onnx_fp32", "size_mb_onnx_int8", "val_acc_onnx_int8",
                 "test_acc_onnx_int8", "test_acc_onnx_fp32", "test_agree_onnx_int8"]
    assert done[per_trial].notna().all().all()
    # int8 weights are a quarter of fp32 ones; the QDQ graph's scales and nodes are a fixed
    # ~35 kB, which a channel-pruned resnet8 (90 kB in fp32) notices
    assert (done["size_mb_onnx_int8"] < done["size_mb_onnx_fp32"]).all()
    big = done[done["size_mb_onnx_fp32"] > 0.3]
    assert len(big) and (big["size_mb_onnx_int8"] < 0.4 * big["size_mb_onnx_fp32"]).all()
    assert ((done["test_acc_onnx_fp32"] - done["test_acc"]).abs() <= 0.011).all()
    assert sweep_run.trials.loc[sweep_run.trials["status"] != "completed", per_trial] \
        .isna().all().all()


def test_epochs_table_matches_epochs_trained(sweep_run):
    df, ep = sweep_run.trials, sweep_run.epochs
    assert not ep.duplicated(["trial_id", "epoch"]).any()
    assert set(ep["trial_id"]) == set(df["trial_id"])
    for _, r in df.iterrows():
        e = ep[ep["trial_id"] == r["trial_id"]].sort_values("epoch")
        assert e["epoch"].tolist() == list(range(1, int(r["epochs_trained"]) + 1))
        phases = e["phase"].tolist()
        assert phases == ["train"] * min(3, len(phases)) + ["finetune"] * (len(phases) - 3)
        assert e["val_acc"].between(0, 1).all()


PROGRESS = re.compile(
    r"^(sweep 'main': \d+ trials .*"
    r"|optuna study 'main': sqlite:///\S+/optuna\.db \(browse it: optuna-dashboard "
    r"sqlite:///\S+/optuna\.db\)"
    r"|preparing \d+ teacher\(s\) once for the whole sweep: .*"
    r"|teacher \w+/\w+: (trained in|cache hit).*"
    r"|\[main\] \d\d:\d\d elapsed.*\| running \d+, completed \d+, stopped \d+, errored \d+ of "
    rf"{MAIN_PLANNED} \| best val_acc: .*"
    r"|measuring latency of \d+ distinct networks \(\d+ completed students\).*"
    r"|exporting the \d+ completed students to ONNX \(fp32 and INT8\).*"
    r"|sweep finished in .*|best by val_acc: .*|results: .*|dashboard: .*)$")


def test_progress_is_one_compact_line_per_event_without_ray_logs(sweep_run):
    lines = sweep_run.stdout.splitlines()
    assert lines, "no output"
    odd = [ln for ln in lines if not PROGRESS.match(ln)]
    assert not odd, odd[:5]
    assert not sweep_run.stderr.strip(), sweep_run.stderr[-2000:]  # the PNGs need no browser
    progress = [ln for ln in lines if ln.startswith("[main]")]
    assert len(progress) <= 2 * MAIN_PLANNED + sweep_run.wall / 10 + 2
    last = progress[-1]
    assert re.search(r"completed \d+, stopped \d+, errored 0 of", last)
    # one best per student architecture, each named once
    assert re.search(r"best val_acc: cnn4 \d+\.\d% resnet8 \d+\.\d%$", last), last
    assert "dashboard: " in lines[-1]



def read_tensorboard_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} from a TensorBoard events file (TFRecord framing of Event protos:
    length u64, its crc u32, the record, its crc u32), read with tensorboardX's protos."""
    import struct

    from tensorboardX.proto import event_pb2

    data, i, out = path.read_bytes(), 0, {}
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_ray_tunes_own_tools_read_the_run(sweep_run):
    """`ExperimentAnalysis(RUN/ray)` and `tensorboard --logdir RUN/ray` see every trial."""
    from ray.tune import ExperimentAnalysis

    df = ExperimentAnalysis(str(sweep_run.dir / "ray")).dataframe()
    assert sorted(df["trial_id"]) == sorted(sweep_run.trials["trial_id"])
    done = sweep_run.trials.set_index("trial_id")
    for _, r in df.iterrows():
        assert r["val_acc"] == pytest.approx(done.loc[r["trial_id"], "val_acc"])
    curves = 0
    for events in (sweep_run.dir / "ray").glob("*/events.out.tfevents.*"):
        scalars = read_tensorboard_scalars(events)
        steps = [s for s, _ in scalars["ray/tune/val_acc"]]
        assert steps == list(range(1, len(steps) + 1)), steps  # one point per epoch
        curves += 1
    assert curves == len(done)


# --- resume -------------------------------------------------------------------------------------
# One sweep, interrupted twice and resumed twice (three processes, ~75 s):
#   A  a trial errors (injected), then SIGKILL of the whole process group: a crash, an OOM kill;
#   B  --resume, then Ctrl+C (SIGINT to the group, as a terminal sends it) once it made progress;
#   C  --resume again, to the end.

SITECUSTOMIZE = '''
"""Test only: the first KD trial of the sweep raises once (marker file: KDTUNE_TEST_FAIL_ONCE)."""
import os
import sys

_MARKER = os.environ.get("KDTUNE_TEST_FAIL_ONCE")
if _MARKER:
    import importlib.abc
    import importlib.util

    class _Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "kdtune.trial":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                real = module.run_trial

                def run_trial(cfg, *args, **kwargs):
                    if cfg.kd.alpha > 0:
                        try:
                            os.close(os.open(_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                        except FileExistsError:
                            pass
                        else:
                            raise RuntimeError("injected test failure")
                    return real(cfg, *args, **kwargs)

                module.run_trial = run_trial

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Hook())
'''


def run_until(space: Path, out: Path, args: tuple, until, env: dict, sig: int, tag: str,
              timeout: float = 180) -> SimpleNamespace:
    """Start `kdtune sweep` in its own process group, wait until `until(trials)` holds, then
    send `sig` to the whole group. Returns its exit code, output and trials.parquet as it was
    just before the signal."""
    so_path, se_path = out.parent / f"{tag}.stdout", out.parent / f"{tag}.stderr"
    with open(so_path, "w") as so, open(se_path, "w") as se:
        proc = subprocess.Popen(kdtune_cmd("sweep", space, "--out", out, *args), stdout=so,
                                stderr=se, env=env, start_new_session=True)
        try:
            deadline = time.time() + timeout
            while True:
                assert proc.poll() is None, "the sweep ended before it could be interrupted: " \
                    + se_path.read_text()[-2000:]
                assert time.time() < deadline, "the sweep made no progress"
                rows = read_trials(out)
                if until(rows):
                    break
                time.sleep(0.2)
            os.killpg(proc.pid, sig)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return SimpleNamespace(rc=rc, stdout=so_path.read_text(), stderr=se_path.read_text(),
                           rows=rows, after=read_trials(out))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    inject = tmp / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp / "failed-once"
    # every process also logs to MLflow and to W&B, offline (test_resumed_sweep_mlflow_runs,
    # test_resumed_sweep_wandb_runs): only this sweep does, RESUME_SEARCH's other users (bad
    # spaces) stop before any tracker
    space = write_sweep(tmp, {**RESUME_SEARCH, "log_to": ["mlflow", "wandb"]}, tmp / "cache")
    out = tmp / "run"
    mlflow_uri = f"sqlite:///{tmp}/mlflow.db"
    wandb_home = tmp / "wandb-home"  # W&B's user-wide settings, key and cache: not the user's
    trackers = {"MLFLOW_TRACKING_URI": mlflow_uri, "WANDB_MODE": "offline",
                "WANDB_CONFIG_DIR": str(wandb_home / "config"),
                "WANDB_CACHE_DIR": str(wandb_home / "cache"),
                "WANDB_DATA_DIR": str(wandb_home / "data"), "NETRC": str(wandb_home / "netrc")}

    def env(**extra):
        out = {k: v for k, v in cli_env(**trackers, **extra).items()
               if not k.startswith("WANDB_") or k in trackers}  # no WANDB_PROJECT of the user
        return out

    env_a = env(KDTUNE_TEST_FAIL_ONCE=str(marker), PYTHONPATH=os.pathsep.join(
        p for p in (str(inject), os.environ.get("PYTHONPATH")) if p))
    a = run_until(space, out, (), lambda df: (df["status"] == "errored").any() and len(df) >= 3,
                  env_a, signal.SIGKILL, "a")
    a.marker = marker

    def progressed(df):
        return bool(set(df["trial_id"]) - set(a.after["trial_id"]))

    b = run_until(space, out, ("--resume",), progressed, env(), signal.SIGINT, "b")
    b.stamps = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").glob("*.pt")}

    c = subprocess.run(kdtune_cmd("sweep", space, "--out", out, "--resume"),
                       capture_output=True, text=True, env=env(), timeout=SWEEP_TIMEOUT)
    assert c.returncode == 0, c.stdout[-3000:] + c.stderr[-3000:]
    return SimpleNamespace(a=a, b=b, c=c, dir=out, mlflow_uri=mlflow_uri)


def test_killed_sweep_recorded_the_errored_trial_in_one_line(resumed):
    a = resumed.a
    assert a.rc == -signal.SIGKILL
    assert a.marker.exists()
    failed = a.after[a.after["status"] == "errored"]
    assert len(failed) == 1 and "injected test failure" in failed["error"].iloc[0]
    assert re.search(rf"trial {failed['trial_id'].iloc[0]} errored: RuntimeError: injected "
                     "test failure", a.stdout), a.stdout
    assert "Traceback" not in a.stdout + a.stderr, a.stderr[-2000:]


def test_ctrl_c_saves_the_state_and_says_how_to_resume(resumed):
    b = resumed.b
    assert b.rc == 130, b.stderr[-2000:]
    assert "sweep interrupted" in b.stderr and "--resume" in b.stderr
    assert "Traceback" not in b.stdout + b.stderr, b.stderr[-2000:]
    assert re.search(r"resumed: \d+ of 7 trials already finished", b.stdout), b.stdout
    # on resuming, the errored trial left the table (it is rerun as a new trial)
    errored = set(resumed.a.after.loc[resumed.a.after["status"] == "errored", "trial_id"])
    assert not errored & set(b.after["trial_id"])
    assert len(b.after) < RESUME_PLANNED


def test_resumed_sweep_has_every_trial_exactly_once(resumed):
    df = pd.read_parquet(resumed.dir / "trials.parquet")
    assert len(df) == RESUME_PLANNED and df["trial_id"].is_unique, df[["trial_id", "status"]]
    assert set(df["status"]) <= {"completed", "stopped"}, df[["trial_id", "status", "error"]]
    done = df[df["status"] == "completed"]
    assert done["test_acc"].notna().all() and done["latency_ms_b1_cpu"].notna().all()
    assert all(Path(p).is_file() for p in done["checkpoint"])
    # a searcher that lost its state would suggest its first configs again
    keys = list(zip(*(df[c] for c in CONFIG_KEYS + ["seed"])))
    assert len(set(keys)) == len(keys), df[CONFIG_KEYS + ["trial_id"]]
    # the errored trial ran again, once: as a new trial (or under its own id, had Tune's
    # snapshot not yet recorded the error when the sweep was killed)
    a = resumed.a.after
    failed = a[a["status"] == "errored"].iloc[0]
    same = df
    for c in CONFIG_KEYS + ["seed"]:
        same = same[same[c] == failed[c]]
    assert len(same) == 1 and same["status"].iloc[0] in ("completed", "stopped")


def test_resumed_sweep_keeps_trials_finished_before_each_interrupt(resumed):
    df = pd.read_parquet(resumed.dir / "trials.parquet").set_index("trial_id")
    b = resumed.b.after  # after Ctrl+C: every row of it must survive unchanged
    kept = df.loc[b["trial_id"]]
    assert (kept["status"].values == b["status"].values).all()
    assert kept["val_acc"].values == pytest.approx(b["val_acc"].values)
    assert kept["wall_s"].values == pytest.approx(b["wall_s"].values)
    assert all(p.stat().st_mtime_ns == t for p, t in resumed.b.stamps.items())  # not rerun
    # after the kill: the rows of the trials Tune's last snapshot held as finished survive
    # unchanged (B said how many); the others (finished after that snapshot) ran again
    held = int(re.search(r"resumed: (\d+) of", resumed.b.stdout).group(1))
    a = resumed.a.after
    a = a[a["status"] != "errored"]
    unchanged = [tid for tid, st, acc, wall in zip(a["trial_id"], a["status"], a["val_acc"],
                                                   a["wall_s"])
                 if tid in df.index and df.loc[tid, "status"] == st
                 and df.loc[tid, "val_acc"] == pytest.approx(acc)
                 and df.loc[tid, "wall_s"] == pytest.approx(wall)]
    assert len(unchanged) == held, (held, unchanged)


def test_resumed_sweep_epochs_and_rungs_are_consistent(resumed):
    df = pd.read_parquet(resumed.dir / "trials.parquet")
    ep = pd.read_parquet(resumed.dir / "epochs.parquet")
    assert not ep.duplicated(["trial_id", "epoch"]).any()
    assert set(ep["trial_id"]) == set(df["trial_id"])
    for _, r in df.iterrows():
        got = sorted(ep.loc[ep["trial_id"] == r["trial_id"], "epoch"])
        assert got == list(range(1, int(r["epochs_trained"]) + 1)), (r["trial_id"], got)
    asha = json.loads((resumed.dir / "asha_rungs.json").read_text())
    group = df.set_index("trial_id")["group"]
    for g, by_milestone in asha["rungs"].items():
        for ids in by_milestone.values():
            assert set(ids) <= set(group.index) and (group[ids] == g).all(), (g, ids)
    stopped = set(df.loc[df["status"] == "stopped", "trial_id"])
    assert {s["trial_id"] for s in asha["stops"]} == stopped
    assert all(s["group"] == group[s["trial_id"]] for s in asha["stops"])
    assert "Traceback" not in resumed.c.stdout + resumed.c.stderr


def test_resumed_sweep_mlflow_runs(resumed):
    """search.log_to: [mlflow] across the kill -9, the Ctrl+C and two resumes: one run per
    trial, continued rather than duplicated, every epoch once, the final and measured metrics,
    the checkpoint as the only artifact."""
    from mlflow.tracking import MlflowClient

    df = pd.read_parquet(resumed.dir / "trials.parquet").set_index("trial_id")
    client = MlflowClient(resumed.mlflow_uri)
    assert f"MLflow: a run per trial in experiment 'resume' at {resumed.mlflow_uri}" in \
        resumed.c.stdout
    assert "warning: MLflow" not in resumed.a.stderr + resumed.b.stderr + resumed.c.stderr
    exp = client.get_experiment_by_name("resume")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_trial: dict[str, list] = {}
    for r in runs:
        by_trial.setdefault(r.data.tags["trial_id"], []).append(r)
    assert all(len(v) == 1 for v in by_trial.values()), \
        {k: len(v) for k, v in by_trial.items()}
    assert set(df.index) <= set(by_trial), set(df.index) - set(by_trial)
    # the trial that errored (killed sweep) has its FAILED run; --resume reran it as a new
    # trial, with a run of its own (or, had Tune's snapshot missed the error, under its id)
    a = resumed.a.after
    failed = a.loc[a["status"] == "errored", "trial_id"].iloc[0]
    if failed not in df.index:
        assert by_trial[failed][0].info.status == "FAILED"
    # runs of trials the table does not have: errored, or lost with Tune's last snapshot
    assert {by_trial[t][0].info.status for t in set(by_trial) - set(df.index)} <= \
        {"FAILED", "KILLED"}
    for tid, row in df.iterrows():
        run = by_trial[tid][0]
        tags = run.data.tags
        assert (tags["sweep"], tags["trial_id"], tags["git_sha"]) == ("resume", tid,
                                                                      row["git_sha"] or
                                                                      "unknown")
        assert run.info.run_name == tid and run.info.status == "FINISHED", \
            (tid, run.info.status)
        assert run.data.params["kd.alpha"] == str(row["kd.alpha"])
        assert run.data.params["student.arch"] == row["student.arch"]
        history = client.get_metric_history(run.info.run_id, "val_acc")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, int(row["epochs_trained"]) + 1)), (tid, steps)
        arts = [a.path for a in client.list_artifacts(run.info.run_id)]
        if row["status"] == "completed":
            assert run.data.metrics["test_acc"] == pytest.approx(row["test_acc"])
            assert run.data.metrics["latency_ms_b1_cpu"] == \
                pytest.approx(row["latency_ms_b1_cpu"])
            assert arts == ["checkpoint"]
            assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == \
                [f"checkpoint/{tid}.pt"]
        else:
            assert "test_acc" not in run.data.metrics and arts == []


def test_resumed_sweep_wandb_runs(resumed):
    """search.log_to: [wandb], offline, across the kill -9, the Ctrl+C and two resumes: one W&B
    run per trial id (a folder of it per process that logged to it), every epoch at most once at
    step = epoch and in order (all of them but what W&B had not written at the kill -9), the
    final and measured numbers in the summary."""
    from kdtune.sweep.trackers import wandb_run_id
    from wandb_records import by_run_id, logged_steps

    df = pd.read_parquet(resumed.dir / "trials.parquet").set_index("trial_id")
    folder = resumed.dir / "wandb"
    assert f"W&B: a run per trial in group 'resume' of project 'resume', offline in {folder} " \
        in resumed.c.stdout, resumed.c.stdout
    assert "W&B" not in resumed.a.stderr + resumed.b.stderr + resumed.c.stderr
    runs = by_run_id(resumed.dir)
    trial_of = {}  # run id -> trial id, from every folder's name: one trial per run
    for run_id, parts in runs.items():
        (name,) = {p.name for p in parts}
        assert {p.project for p in parts} == {"resume"} and {p.group for p in parts} == \
            {"resume"}
        tid = name.removeprefix("resume-")
        assert run_id == wandb_run_id("resume", tid)
        trial_of[run_id] = tid
        assert parts[0].config["kdtune"]["trial_id"] == tid  # the config, once, in the first
    assert len(set(trial_of.values())) == len(trial_of)
    assert set(df.index) <= set(trial_of.values()), set(df.index) - set(trial_of.values())
    for run_id, parts in runs.items():
        tid = trial_of[run_id]
        if tid not in df.index:  # errored, or lost with Tune's last snapshot: failed or killed
            assert parts[-1].exit_code == 1, (tid, [p.exit_code for p in parts])
            continue
        row = df.loc[tid]
        assert parts[0].config["kd.alpha"] == pytest.approx(row["kd.alpha"])
        assert parts[0].config["student.arch"] == row["student.arch"]
        steps, epochs = logged_steps(parts), int(row["epochs_trained"])
        assert steps == sorted(set(steps)), (tid, steps)  # each epoch at most once, in order
        for i, part in enumerate(parts):
            own, later = logged_steps([part]), logged_steps(parts[i + 1:])
            if not own:
                continue
            assert own == list(range(own[0], own[-1] + 1)), (tid, own)  # none lost in a process
            if part.exit_code is not None:  # a clean end: continued right after it, or the last
                assert (later[0] if later else epochs + 1) == own[-1] + 1, (tid, steps)
        # steps may be missing only where the kill -9 cut a process: what W&B had not written
        # in its last 0.2 s (see trackers.py); that process's folder of the run is unfinished
        missing = set(range(1, epochs + 1)) - set(steps)
        assert len(missing) <= 1 and (not missing or any(p.exit_code is None for p in parts)), \
            (tid, steps, [p.exit_code for p in parts])
        summary = {k: v for p in parts for k, v in p.summary.items()}  # the last value wins
        if row["status"] == "completed":
            assert summary["test_acc"] == pytest.approx(row["test_acc"])
            assert summary["latency_ms_b1_cpu"] == pytest.approx(row["latency_ms_b1_cpu"])
        else:
            assert "test_acc" not in summary
        assert parts[-1].exit_code == 0, (tid, [p.exit_code for p in parts])


# --- errors -----------------------------------------------------------------------------------

BAD_SPACES = {
    # case: (search section change, text the one line must contain)
    "unknown sampler": ({"sampler": "bogus"}, "search.sampler"),
    "unknown param type": ({"space": {"kd.alpha": {"type": "normal", "low": 0.1, "high": 0.5}}},
                           "search.space.kd.alpha"),
    "loguniform low 0": ({"space": {"kd.temperature": {"type": "loguniform", "low": 0,
                                                        "high": 4}}},
                         "search.space.kd.temperature"),
    "low above high": ({"space": {"kd.alpha": {"type": "uniform", "low": 0.8, "high": 0.2}}},
                       "search.space.kd.alpha"),
    "choice without values": ({"space": {"student.arch": {"type": "choice"}}},
                              "search.space.student.arch"),
    "empty choice": ({"space": {"student.arch": {"type": "choice", "values": []}}},
                     "search.space.student.arch"),
    "unknown choice": ({"space": {"student.arch": {"type": "choice",
                                                   "values": ["cnn4", "nope"]}}},
                       "search.space.student.arch"),
    "out of the config's range": ({"space": {"kd.alpha": {"type": "uniform", "low": 0.1,
                                                          "high": 1.5}}},
                                  "search.space.kd.alpha"),
    "unknown space key": ({"space": {"kd.alfa": {"type": "uniform", "low": 0.1, "high": 0.5}}},
                          "search.space.kd.alfa"),
    "teacher stem range": ({"space": {"teacher.stem": {"type": "uniform", "low": 0,
                                                       "high": 1}}},
                           "search.space.teacher.stem"),
    "teacher epochs range": ({"space": {"teacher.epochs": {"type": "int", "low": 1,
                                                           "high": 3}}},
                             "search.space.teacher.epochs"),
    "grid without grid sampler": ({"space": {"kd.alpha": {"type": "grid",
                                                          "values": [0.1, 0.5]}}},
                                  "search.space.kd.alpha"),
    "unknown objective": ({"objectives": {"accuracy": "max"}}, "search.objectives.accuracy"),
    "bad mode": ({"objectives": {"val_acc": "maximize"}}, "search.objectives.val_acc"),
    "unknown search key": ({"budget": 3}, "search.budget"),
    "seeds not ints": ({"seeds": [0, "a"]}, "search.seeds"),
    "seeds not a list": ({"seeds": 3}, "search.seeds"),
    "seeds booleans": ({"seeds": [True]}, "search.seeds"),
    "data key searched": ({"space": {"data.val_size": {"type": "choice", "values": [50, 60]}}},
                          "search.space.data.val_size"),
}
# Only Optuna refuses these; `kdtune sweep` checks them before Ray starts
SWEEP_ONLY = {
    "step on a log scale": ({"space": {"kd.temperature": {"type": "loguniform", "low": 1,
                                                          "high": 4, "step": 0.5}}},
                            "search.space.kd.temperature"),
    "fractional int step": ({"space": {"train.epochs": {"type": "int", "low": 1, "high": 3,
                                                        "step": 0.5}}},
                            "search.space.train.epochs"),
}


def bad_space(folder: Path, change: dict) -> Path:
    search = copy.deepcopy(RESUME_SEARCH)
    search.update(change)
    return write_sweep(folder, search, folder / "cache")


def assert_one_line_error(capsys, rc, needle):
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("kdtune: error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_search_space_is_a_one_line_error(case, tmp_path, capsys):
    change, needle = BAD_SPACES[case]
    path = bad_space(tmp_path, change)
    assert_one_line_error(capsys, main(["validate", str(path)]), needle)
    out = tmp_path / "run"
    assert_one_line_error(capsys, main(["sweep", str(path), "--out", str(out)]), needle)
    assert not out.exists()  # refused before anything was written or started


@pytest.mark.parametrize("case", sorted(SWEEP_ONLY))
def test_search_space_optuna_refuses_is_a_one_line_sweep_error(case, tmp_path, capsys):
    change, needle = SWEEP_ONLY[case]
    out = tmp_path / "run"
    rc = main(["sweep", str(bad_space(tmp_path, change)), "--out", str(out)])
    assert_one_line_error(capsys, rc, needle)
    assert not out.exists()


def test_bad_search_space_error_from_the_real_command(tmp_path):
    path = bad_space(tmp_path, {"space": {"kd.alpha": {"type": "uniform", "low": 0.1,
                                                       "high": 1.5}}})
    proc = subprocess.run(kdtune_cmd("sweep", path, "--out", tmp_path / "run"),
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        "kdtune: error: search.space.kd.alpha: "), proc.stderr


def test_resume_guards(sweep_run, tmp_path, capsys):
    space = str(sweep_run.space)
    rc = main(["sweep", space, "--out", str(sweep_run.dir)])
    assert_one_line_error(capsys, rc, "--resume")
    rc = main(["sweep", space, "--out", str(tmp_path / "nothing"), "--resume"])
    assert_one_line_error(capsys, rc, "no sweep to resume")
    rc = main(["sweep", space, "--out", str(sweep_run.dir), "--resume",
               "--set", "search.num_samples=7"])
    assert_one_line_error(capsys, rc, "search.num_samples")
    assert len(pd.read_parquet(sweep_run.dir / "trials.parquet")) == MAIN_PLANNED  # untouched


def test_resume_may_move_machine_local_paths_but_not_change_the_data(sweep_run):
    import dataclasses

    from kdtune.data import load_split
    from kdtune.sweep import resolve_paths
    from kdtune.sweep.resume import check_same_data, portable

    sw = load_sweep_config(sweep_run.space)
    base = resolve_paths(sw.base.to_dict())
    moved = copy.deepcopy(base)
    moved["cache_dir"], moved["data"]["root"] = "/elsewhere/cache", "/elsewhere/data"
    assert portable(moved) == portable(base)  # another machine's paths: not a difference
    split = load_split(sw.base.data, base["cache_dir"])
    check_same_data(sw, base, split, sweep_run.dir)  # the data the teachers were keyed by
    other = load_split(dataclasses.replace(sw.base.data, synthetic_train=600), base["cache_dir"])
    with pytest.raises(KDTuneError, match="is not the data this sweep started with"):
        check_same_data(sw, base, other, sweep_run.dir)


def test_a_column_of_mixed_types_is_written_as_text_not_lost(tmp_path):
    from kdtune.sweep.writer import write_parquet

    df = pd.DataFrame({"train.channels_last": ["auto", True, None], "val_acc": [0.5, 1, None]})
    write_parquet(df, tmp_path / "t.parquet")
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert back["train.channels_last"].tolist()[:2] == ["auto", "True"]
    assert pd.isna(back["train.channels_last"][2])
    assert back["val_acc"].tolist()[:2] == [0.5, 1.0]



def test_multi_objective_search_tells_optuna_both_means_over_the_seeds():
    """kd_prune.yaml's search: validation accuracy up and FLOPs down, each suggestion run once
    per seed; Optuna must see both objectives, averaged over the seeds, in their directions."""
    import optuna

    from kdtune.config import sweep_config
    from kdtune.sweep.space import SeededSearch

    sw = sweep_config({"search": {
        "space": {"prune.method": {"type": "choice", "values": ["unstructured", "channel"]},
                  "prune.ratio": {"type": "uniform", "low": 0.0, "high": 0.7}},
        "objectives": {"val_acc": "max", "flops": "min"}, "seeds": [0, 1], "num_samples": 2}})
    search = SeededSearch(sw)
    first, second = search.suggest("t1"), search.suggest("t2")
    assert {k: v for k, v in first.items() if k != "seed"} == \
        {k: v for k, v in second.items() if k != "seed"}
    assert (first["seed"], second["seed"]) == (0, 1)
    search.on_trial_complete("t1", {"val_acc": 0.5, "flops": 3e7, "final": True})
    search.on_trial_complete("t2", {"val_acc": 0.7, "flops": 3e7, "final": True})
    study = search.study
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 1 and done[0].values == pytest.approx([0.6, 3e7])


# --- the Optuna study beside the run (kdtune.sweep.space.SeededSearch) --------------------------


def study_and_table(run_dir: Path):
    import optuna

    name = yaml.safe_load((run_dir / "sweep.yaml").read_text())["search"]["name"]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    return study, pd.read_parquet(run_dir / "trials.parquet"), \
        pd.read_parquet(run_dir / "epochs.parquet")


def check_trial_against_rows(t, rows: pd.DataFrame, epochs: pd.DataFrame) -> None:
    """An Optuna trial says what trials.parquet says of its seed group."""
    import optuna

    TS = optuna.trial.TrialState
    assert not rows["is_baseline"].astype(bool).any()
    assert rows["kd.temperature"].tolist() == pytest.approx([t.params["kd.temperature"]] *
                                                            len(rows))
    statuses = set(rows["status"])
    if "stopped" in statuses:
        assert t.state == TS.PRUNED, (t.number, statuses)
        last = int(rows["epochs_trained"].min())  # the last epoch every seed reached
        curve = epochs[epochs["trial_id"].isin(rows["trial_id"]) & (epochs["epoch"] == last)]
        assert t.value == pytest.approx(curve["val_acc"].mean())
        assert t.user_attrs["asha_stopped_at_epoch"] == last
    elif statuses == {"completed"}:
        assert t.state == TS.COMPLETE, (t.number, statuses)
        assert t.value == pytest.approx(rows["val_acc"].mean())
        assert sorted(t.intermediate_values) == list(range(1, EPOCHS + 1))
    else:
        assert t.state == TS.FAIL, (t.number, statuses)


def test_optuna_study_has_one_trial_per_searched_config_as_trials_parquet_says(sweep_run):
    import optuna

    study, df, epochs = study_and_table(sweep_run.dir)
    assert "optuna study 'main': sqlite:///" in sweep_run.stdout
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.metric_names == ["val_acc"]
    trials = study.trials
    assert len(trials) == MAIN_SEARCH["num_samples"]  # baselines stay out
    seen = set()
    for t in trials:
        ids = t.user_attrs["ray_trial_ids"]
        rows = df[df["trial_id"].isin(ids)]
        assert len(rows) == len(ids) == len(MAIN_SEARCH["seeds"])
        seen |= set(ids)
        check_trial_against_rows(t, rows, epochs)
    assert seen == set(df.loc[~df["is_baseline"].astype(bool), "trial_id"])
    states = {t.state for t in trials}
    assert optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE in states


def test_optuna_study_after_kill_and_resume_has_no_running_trial_and_no_duplicate(resumed):
    import optuna

    TS = optuna.trial.TrialState
    study, df, epochs = study_and_table(resumed.dir)
    trials = study.trials
    assert TS.RUNNING not in {t.state for t in trials}
    retries = {t.user_attrs["kdtune_retry_of"]: t for t in trials
               if "kdtune_retry_of" in t.user_attrs}
    # a trial the kill caught half drawn (Optuna writes each parameter on its own) is FAIL
    # and kdtune_abandoned; the injected error is FAIL and was retried
    failed = [t for t in trials if t.state == TS.FAIL and "kdtune_abandoned" not in t.user_attrs]
    assert failed and all(t.number in retries for t in failed)
    # a config that finished after the snapshot the kill left ran again as an attempt naming
    # it (its first trials were lost with the snapshot): the first is history, not a config
    rerun = {t.user_attrs["kdtune_rerun_of"] for t in trials if "kdtune_rerun_of" in t.user_attrs}
    live = [t for t in trials if t.state != TS.FAIL and t.number not in rerun]
    assert all(set(t.params) == {"kd.temperature", "kd.alpha", "student.arch"} for t in live)
    assert len(live) == RESUME_PLANNED  # one per config (one seed each)
    assert len({json.dumps(t.params, sort_keys=True) for t in live}) == len(live)
    for t in live:
        rows = df[df["trial_id"].isin(t.user_attrs["ray_trial_ids"])]
        check_trial_against_rows(t, rows, epochs)


# --- docs/explore.ipynb on this module's sweep ------------------------------------------------


def test_explore_notebook_runs_on_a_sweep_and_exports_the_student_it_picks(sweep_run,
                                                                           monkeypatch):
    """The notebook a user opens first: executed top to bottom in a real kernel against the
    module's sweep (as `KDTUNE_RUN`); it must pick a student of the front and export it."""
    import nbclient
    import nbformat

    path = Path(__file__).resolve().parents[1] / "docs" / "explore.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count")
               for c in nb.cells if c.cell_type == "code"), "commit it with outputs stripped"
    monkeypatch.setenv("KDTUNE_RUN", str(sweep_run.dir))
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3").execute()
    text = "\n".join(str(o.get("text") or (o.get("data") or {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    done = sweep_run.trials[sweep_run.trials["status"] == "completed"]
    picked = re.search(r"trial (\w+): val", text).group(1)
    assert picked in set(done["trial_id"])
    assert (sweep_run.dir / "export" / f"{picked}.onnx").is_file()
    assert "onnxruntime test accuracy" in text
    assert any("application/vnd.plotly.v1+json" in (o.get("data") or {})
               for c in nb.cells if c.cell_type == "code" for o in c.outputs)  # a figure shown
