"""Run folders at a URI (kdtune.storage) and atomic writes.

S3 is a real S3 protocol server on localhost (moto's, started in this process; pyarrow's own S3
client talks to it through AWS_ENDPOINT_URL, exactly as it would talk to AWS); file:// URIs go
through the same pyarrow code on the local disk. The sweep test runs `kdtune sweep` to an s3://
run folder, kills it (SIGKILL), throws its local working copy away, as if the resume happened on
another machine, and resumes from the bucket alone. About a minute on 2 CPUs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import time
from types import SimpleNamespace

import pandas as pd
import pyarrow.fs
import pytest
import yaml
from conftest import environ
from test_sweep import RESUME_SEARCH, SWEEP_TIMEOUT, cli_env, kdtune_cmd, write_sweep

from kdtune.cli import main
from kdtune.errors import KDTuneError
from kdtune.storage import RunStore, atomic_path

BUCKET = "kdtune-test"


# --- atomic writes ------------------------------------------------------------------------------


def test_atomic_path_replaces_whole_or_keeps_the_old_file(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("old")
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_text("new")
        assert path.read_text() == "old"  # readers see the old file until the block ends
    assert path.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]  # no temp left


def test_atomic_path_suffix_for_writers_that_append_their_extension(tmp_path):
    import numpy as np

    path = tmp_path / "arrays.npz"
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, a=np.arange(3))
    assert np.load(path)["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz"]


# --- a local S3 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        with environ(**env):
            fs = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, access_key="test",
                                         secret_key="test", region="us-east-1",
                                         allow_bucket_creation=True)
            fs.create_dir(BUCKET)
            yield SimpleNamespace(env=env, fs=fs)
    finally:
        server.stop()


def _remote_files(fs, root: str) -> dict[str, bytes]:
    sel = pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)
    out = {}
    for info in fs.get_file_info(sel):
        if info.type == pyarrow.fs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(root) + 1:]] = f.read()
    return out


@pytest.fixture(params=["s3", "file"])
def uri_store(request, tmp_path):
    """(RunStore, filesystem, root path in it) for an s3:// or a file:// run folder."""
    if request.param == "s3":
        s3 = request.getfixturevalue("s3")
        uri = f"s3://{BUCKET}/unit/{tmp_path.name}"
        fs, root = s3.fs, f"{BUCKET}/unit/{tmp_path.name}"
    else:
        uri = f"file://{tmp_path}/remote/run"
        fs, root = pyarrow.fs.LocalFileSystem(), f"{tmp_path}/remote/run"
    return RunStore(uri, tmp_path / "cache"), fs, root


def test_run_store_at_a_uri_works_in_a_local_copy_and_uploads_what_is_written(uri_store,
                                                                               tmp_path):
    store, fs, root = uri_store
    assert store.remote and store.local.is_relative_to(tmp_path / "cache" / "runs")
    assert store.url("trials.parquet") == f"{store.uri}/trials.parquet"
    assert store.ray_storage() == (root, store.fs) and store.ray_path == f"{root}/ray"
    store.prepare_local()
    assert not store.exists("sweep.yaml")
    (store.local / "sweep.yaml").write_text("a: 1\n")
    (store.local / "checkpoints").mkdir()
    (store.local / "checkpoints" / "t1.pt").write_bytes(b"\x00" * 3_000_000)  # > one chunk
    store.push("sweep.yaml", "checkpoints/t1.pt", "absent.json")
    assert store.exists("sweep.yaml") and store.read_bytes("sweep.yaml") == b"a: 1\n"
    assert _remote_files(fs, root) == {"sweep.yaml": b"a: 1\n",
                                       "checkpoints/t1.pt": b"\x00" * 3_000_000}
    store.delete("sweep.yaml")
    assert not (store.local / "sweep.yaml").exists() and not store.exists("sweep.yaml")
    store.delete("sweep.yaml")  # already gone: fine


def test_pull_makes_a_fresh_working_copy_without_rays_folder(uri_store):
    store, fs, root = uri_store
    store.prepare_local()
    (store.local / "stale.parquet").write_text("from an earlier run on this machine")
    store.ray_write("experiment_state-1.json", b"{}")
    store.ray_write("searcher-state-1.pkl", b"s")
    store.ray_mkdir("trainable_x/checkpoint_000001")
    for name, data in (("trials.parquet", b"t"), ("checkpoints/a.pt", b"c")):
        fs.create_dir(f"{root}/{name}".rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(f"{root}/{name}") as f:
            f.write(data)
    store.pull(top_level_only=True)
    assert sorted(p.name for p in store.local.rglob("*")) == ["trials.parquet"]
    store.pull()
    assert sorted(p.relative_to(store.local).as_posix() for p in store.local.rglob("*")
                  if p.is_file()) == ["checkpoints/a.pt", "trials.parquet"]
    # the repairs --resume makes in Ray's folder
    assert store.ray_glob("*-1.*") == ["experiment_state-1.json", "searcher-state-1.pkl"]
    assert store.ray_read_text("experiment_state-1.json") == "{}"
    store.ray_delete("searcher-state-1.pkl")
    assert store.ray_glob("*") == ["experiment_state-1.json"]
    assert store.ray_is_dir("trainable_x") and store.ray_exists("trainable_x/checkpoint_000001")
    store.ray_remove()
    assert store.ray_glob("*") == [] and not store.ray_exists("trainable_x")


def test_local_run_store_is_the_folder_itself(tmp_path):
    store = RunStore(tmp_path / "run", tmp_path / "cache")
    assert not store.remote and store.local == (tmp_path / "run").resolve()
    assert store.ray_storage() == (str(store.local), None)
    assert store.url("trials.parquet") == str(store.local / "trials.parquet")
    store.prepare_local()
    store.push("nothing-to-do.json")  # a local run has nowhere else to upload to
    store.ray_write("experiment_state-1.json", b"{}")
    assert (store.local / "ray" / "experiment_state-1.json").read_text() == "{}"


def test_failed_upload_during_a_sweep_is_a_warning_and_retried(s3, tmp_path, capsys):
    bucket = f"late-{tmp_path.name.lower().replace('_', '-')}"[:60]
    store = RunStore(f"s3://{bucket}/run", tmp_path)
    store.prepare_local()
    (store.local / "trials.parquet").write_bytes(b"v1")
    store.push("trials.parquet", soft=True)  # the bucket is not there (yet)
    assert store.pending == {"trials.parquet"}
    err = capsys.readouterr().err
    assert err.startswith(f"warning: cannot write s3://{bucket}/run") and err.count("\n") == 1
    store.push("trials.parquet", soft=True)
    assert capsys.readouterr().err == ""  # warned once per file, not per retry
    s3.fs.create_dir(bucket)
    store._made = set()
    (store.local / "epochs.parquet").write_bytes(b"e")
    store.push("epochs.parquet", soft=True)  # the next upload takes the pending one along
    assert store.pending == set()
    assert _remote_files(s3.fs, f"{bucket}/run") == {"trials.parquet": b"v1",
                                                     "epochs.parquet": b"e"}


def test_unreachable_or_unknown_storage_is_one_line_naming_the_uri(s3, tmp_path):
    with pytest.raises(KDTuneError, match=r"^gopher://x/run: pyarrow cannot open 'gopher://' "
                                          r"URIs .*; use s3://, gs://"):
        RunStore("gopher://x/run", tmp_path)
    with pytest.raises(KDTuneError, match=r"^s3://b/run\?region=x: no \?options in a storage "
                                          r"URI; set them in the environment"):
        RunStore("s3://b/run?region=x", tmp_path)
    # opening fails before any file is touched (here: no JVM for HDFS, or no such namenode)
    with pytest.raises(KDTuneError, match=r"^cannot open hdfs://namenode\.invalid:8020/run: "):
        RunStore("hdfs://namenode.invalid:8020/run", tmp_path)
    store = RunStore("s3://no-such-bucket/run", tmp_path)
    store.prepare_local()
    (store.local / "sweep.yaml").write_text("a: 1\n")
    with pytest.raises(KDTuneError) as e:
        store.push("sweep.yaml")
    msg = str(e.value)
    assert msg.startswith("cannot write s3://no-such-bucket/run") and \
        "no-such-bucket" in msg and "\n" not in msg


def test_validate_refuses_an_unknown_storage_scheme(tmp_path, capsys):
    space = write_sweep(tmp_path, {**RESUME_SEARCH, "storage": "ftp://host/run"},
                        tmp_path / "cache")
    assert main(["validate", str(space)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdtune: error: search.storage: ftp://host/run: unknown URI scheme; "
                          "allowed: s3://, gs://") and "\n" not in err


# --- a sweep in a bucket, killed and resumed from the bucket alone ------------------------------

S3_PLANNED = 4


def _bucket_trials(fs, root: str) -> pd.DataFrame:
    try:
        with fs.open_input_stream(f"{root}/trials.parquet") as f:
            return pd.read_parquet(io.BytesIO(f.read()))
    except (OSError, ValueError):  # not written yet
        return pd.DataFrame(columns=["trial_id", "status"])


@pytest.fixture(scope="module")
def s3_sweep(s3, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s3sweep")
    search = {**RESUME_SEARCH, "name": "s3", "num_samples": S3_PLANNED,
              "storage": f"s3://{BUCKET}/sweeps/s3"}
    space = write_sweep(tmp, search, tmp / "cache")
    root = f"{BUCKET}/sweeps/s3"
    env = cli_env(**s3.env)

    # A: killed (SIGKILL to the whole process group) once the bucket holds a finished trial
    with open(tmp / "a.stdout", "w") as so, open(tmp / "a.stderr", "w") as se:
        proc = subprocess.Popen(kdtune_cmd("sweep", space), stdout=so, stderr=se, env=env,
                                start_new_session=True)
        try:
            deadline = time.time() + 180
            while len(_bucket_trials(s3.fs, root)) < 1:
                assert proc.poll() is None, (tmp / "a.stderr").read_text()[-2000:]
                assert time.time() < deadline, "the sweep wrote nothing to the bucket"
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    killed = _bucket_trials(s3.fs, root)
    at_kill = _remote_files(s3.fs, root)
    work = tmp / "cache" / "runs" / "s3" / BUCKET / "sweeps" / "s3"
    assert (work / "trials.parquet").is_file()  # the working copy the bucket mirrors
    import shutil

    shutil.rmtree(work)  # resume on "another machine": all it has is the bucket

    # B: resumed from the bucket to the end, with this "machine's" own cache folder
    other = tmp / "other-cache"
    b = subprocess.run(kdtune_cmd("sweep", space, "--resume", "--set", f"cache_dir={other}"),
                       capture_output=True, text=True, env=env, timeout=SWEEP_TIMEOUT)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    # the dashboard of the run, rendered with the very cache folder the sweep used
    d = subprocess.run(kdtune_cmd("dashboard", f"s3://{BUCKET}/sweeps/s3", "--cache-dir",
                                  other), capture_output=True, text=True, env=env,
                       timeout=SWEEP_TIMEOUT)
    return SimpleNamespace(fs=s3.fs, root=root, killed=killed, at_kill=at_kill, b=b, d=d,
                           work=work, other=other,
                           a_stdout=(tmp / "a.stdout").read_text(),
                           files=_remote_files(s3.fs, root))


def test_s3_sweep_prints_where_it_writes(s3_sweep):
    assert f"-> s3://{BUCKET}/sweeps/s3 (working copy {s3_sweep.work})" in s3_sweep.a_stdout
    out = s3_sweep.b.stdout
    assert f"resuming the sweep in s3://{BUCKET}/sweeps/s3" in out
    assert f"(working copy {s3_sweep.other}/runs/s3/{BUCKET}/sweeps/s3)" in out
    assert f"results: s3://{BUCKET}/sweeps/s3/trials.parquet" in out
    assert f"dashboard: s3://{BUCKET}/sweeps/s3/dashboard.html" in out


def test_s3_sweep_resumed_from_the_bucket_has_every_trial_once(s3_sweep):
    df = _bucket_trials(s3_sweep.fs, s3_sweep.root)
    assert len(df) == S3_PLANNED and df["trial_id"].is_unique
    assert 1 <= len(s3_sweep.killed) < S3_PLANNED  # the kill fell mid-sweep
    assert re.search(r"resumed: \d+ of 4 trials already finished", s3_sweep.b.stdout)
    assert set(df["status"]) <= {"completed", "stopped"}
    kept = s3_sweep.killed[s3_sweep.killed["status"].isin(["completed", "stopped"])]
    assert set(kept["trial_id"]) <= set(df["trial_id"])  # finished before the kill: kept
    sweep_yaml = yaml.safe_load(s3_sweep.files["sweep.yaml"])
    assert sweep_yaml["search"]["storage"] == f"s3://{BUCKET}/sweeps/s3"


def test_s3_sweep_uploads_each_file_as_it_is_written(s3_sweep):
    """What the bucket held at the moment of the kill: every file kdtune had written by then,
    not only what an orderly end would upload."""
    files = s3_sweep.at_kill
    for name in ("sweep.yaml", "teachers.json", "trials.parquet", "epochs.parquet",
                 "ray-snapshot.pkl"):
        assert name in files, name
    assert "dashboard.html" not in files
    done = s3_sweep.killed[s3_sweep.killed["status"] == "completed"]
    for tid in done["trial_id"]:
        assert f"checkpoints/{tid}.pt" in files
    assert any(n.startswith("ray/experiment_state-") for n in files)


def test_s3_sweep_keeps_everything_in_the_bucket(s3_sweep):
    files = s3_sweep.files
    df = _bucket_trials(s3_sweep.fs, s3_sweep.root)
    for name in ("sweep.yaml", "teachers.json", "epochs.parquet", "asha_rungs.json",
                 "ray-snapshot.pkl", "dashboard.html", "report.json", "results.csv"):
        assert name in files, name
    # Ray Tune's own state and the trials' epoch checkpoints went to the bucket directly
    assert any(n.startswith("ray/experiment_state-") for n in files)
    assert any(n.startswith("ray/trainable_") and n.endswith("/trial_ckpt.pt") for n in files)
    done = df[df["status"] == "completed"]
    assert len(done) >= 1
    for tid, ck in zip(done["trial_id"], done["checkpoint"]):
        assert ck == f"s3://{BUCKET}/sweeps/s3/checkpoints/{tid}.pt"
        assert f"checkpoints/{tid}.pt" in files
    assert done["latency_ms_b1_cpu"].notna().all()  # measured after the trials, stored back
    epochs = pd.read_parquet(io.BytesIO(files["epochs.parquet"]))
    assert set(epochs["trial_id"]) == set(df["trial_id"])


def test_dashboard_of_an_s3_run_goes_back_into_the_bucket(s3_sweep):
    assert s3_sweep.d.returncode == 0, s3_sweep.d.stderr[-2000:]
    assert s3_sweep.d.stdout.strip().splitlines()[-1] == \
        f"s3://{BUCKET}/sweeps/s3/dashboard.html"
    files = _remote_files(s3_sweep.fs, s3_sweep.root)
    html = files["dashboard.html"].decode()
    assert "<html" in html.lower() and "plotly" in html.lower()
    report = json.loads(files["report.json"])
    assert report["provenance"]["runs"] == [f"s3://{BUCKET}/sweeps/s3"]
    copy = s3_sweep.other / "dashboards" / "s3" / BUCKET / "sweeps" / "s3"
    assert (copy / "trials.parquet").is_file()
    assert not (copy / "checkpoints").exists()  # the dashboard reads the tables only
    # the sweep's own working copy (same cache folder) is left alone
    sweep_copy = s3_sweep.other / "runs" / "s3" / BUCKET / "sweeps" / "s3"
    assert len(list((sweep_copy / "checkpoints").glob("*.pt"))) >= 1


def test_s3_sweep_keeps_its_optuna_study_in_the_bucket(s3_sweep, tmp_path):
    """The study's SQLite file is uploaded as it changes (the kill found it in the bucket), and
    the resume on "another machine" reopened the bucket's copy: it ends with every searched
    config once, none RUNNING, each naming its rows of trials.parquet."""
    import optuna

    assert "optuna.db" in s3_sweep.at_kill
    (tmp_path / "optuna.db").write_bytes(s3_sweep.files["optuna.db"])
    study = optuna.load_study(study_name="s3", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    df = _bucket_trials(s3_sweep.fs, s3_sweep.root)
    trials = study.trials
    assert optuna.trial.TrialState.RUNNING not in {t.state for t in trials}
    assert len(trials) == S3_PLANNED
    ids = [i for t in trials for i in t.user_attrs["ray_trial_ids"]]
    assert set(df["trial_id"]) <= set(ids)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == S3_PLANNED
