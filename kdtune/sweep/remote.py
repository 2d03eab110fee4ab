"""The work a sweep sends to Ray workers, on any node of a cluster: the trial (a Tune function
trainable), a teacher's preparation, and the latency measurement of finished students.

Each starts with `nodes.check_worker`: the node's library versions against the driver's, and
Ray's GPU label against what torch there can see. Nothing here may outlive the call: with
`reuse_actors` one worker process runs many trials in turn.
"""

from __future__ import annotations

import copy
import io
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .. import export, measure
from ..config import trial_config
from ..data import DeviceData
from ..models import load_student
from ..teacher import prepare_teacher, teacher_key
from ..train import resolve_channels_last, resolve_device, resolve_precision
from ..trial import run_trial
from ._ray import ray, tune
from .nodes import check_worker
from .plan import trial_cfg


def _clean(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items()
            if k not in ("history", "model") and (v is None or isinstance(v, (int, float, str,
                                                                                  bool)))}


def trainable(config: dict, split=None, teachers=None, base=None, cache_mode="none",
              threads=1, expected=None, checkpoint_every_s=0.0):
    """One run_trial with tune.report plugged in. `expected`: the driver's library versions;
    `checkpoint_every_s`: search.checkpoint_every_s."""
    where = check_worker(expected)
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
    if ckpt is not None:  # an empty one (see resume.recreate_missing_checkpoints): start over
        try:
            resume = Path(ckpt.to_directory(str(resume_dir)))
        except OSError as e:
            print(f"cannot restore {ckpt.path} ({e}); starting the trial over", flush=True)

    def report(metrics):
        # a checkpoint only when the trial wrote a new one: Tune copies each to the run folder
        # and forces an experiment snapshot for it
        new = metrics.get("checkpoint_saved")
        tune.report({**_clean(metrics), **where},
                    checkpoint=tune.Checkpoint.from_directory(str(work)) if new else None)

    try:
        run_trial(cfg, report=report, checkpoint_dir=work, resume_from=resume, split=split,
                  teacher=teacher, cache_mode=cache_mode, log=print,
                  checkpoint_every_s=checkpoint_every_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(resume_dir, ignore_errors=True)


def prepare_one(cfg_dict: dict, split, want_views: bool, threads: int, expected=None,
                log=print):
    """A teacher trained (or loaded from this node's cache) and its view cache, as (meta, the
    Teacher on the CPU). `expected` None: in the driver itself, nothing to check."""
    where = check_worker(expected) if expected is not None else {}
    started = time.time()
    cfg = trial_config(cfg_dict)
    dev = resolve_device(cfg.device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dd = DeviceData(split, dev, augment=cfg.data.augment, resize=cfg.data.resize,
                        channels_last=resolve_channels_last(cfg.train.channels_last, dev))
        t = prepare_teacher(cfg, split, dd, want_views=want_views, log=log)
    finally:
        torch.set_num_threads(before)
    t.model.cpu()
    if t.views is not None:
        t.views = t.views.cpu()
    meta = {"key": t.key, "name": cfg.teacher.name(), "arch": cfg.teacher.arch,
            "stem": cfg.teacher.stem, "members": t.members,
            "val_acc": t.val_acc, "test_acc": t.test_acc, "train_s": t.train_s,
            "views_build_s": t.views_build_s, "cache_hit": t.cache_hit,
            "view_cache": t.views is not None, "device": measure.device_label(dev),
            "node": where.get("node"), "started_at": started, "finished_at": time.time()}
    return meta, t


def measure_jobs(jobs: list[dict], threads: int, expected=None, split=None) -> dict:
    """Latency of each student on this node's GPU (if torch sees one) and its CPU with
    `threads` threads, one model at a time; keyed by each job's "key". A job with "onnx" also
    exports its "members" (trial id -> checkpoint bytes) to ONNX fp32 and INT8 and measures
    them in onnxruntime (export.measure_students, INT8 accuracy on `split`); what differs per
    member comes back under the row's "per_trial"."""
    where = check_worker(expected) if expected is not None else {}
    out = {}
    devices = [torch.device(d) for d in (["cuda"] if torch.cuda.is_available() else [])
               + ["cpu"]]
    for job in jobs:
        model = load_student(io.BytesIO(job["state"]), arch=job["arch"], stem=job["stem"])
        row = {"measure_node": where.get("node")}
        for dev in devices:
            m = measure.measure_speed(
                model, dev, input_size=job["input_size"], batch=job["batch"],
                warmup=job["warmup"], runs=job["runs"],
                threads=threads if dev.type == "cpu" else None,
                bf16=resolve_precision(job["precision"], dev) == "bf16",
                channels_last=resolve_channels_last(job["channels_last"], dev))
            tag = "gpu" if dev.type == "cuda" else "cpu"
            row[f"latency_ms_b1_{tag}"] = m["latency_ms_b1"]
            row[f"latency_ms_b1_{tag}_p10"] = m["latency_ms_b1_p10"]
            row[f"latency_ms_b1_{tag}_p90"] = m["latency_ms_b1_p90"]
            row[f"throughput_ips_{tag}"] = m["throughput_ips"]
            row[f"{tag}_device"] = m["measure_device"]
            row[f"{tag}_precision"] = m["measure_precision"]
            if tag == "cpu":
                row["cpu_threads"] = m["measure_threads"]
        if job.get("onnx"):
            row.update(_measure_onnx(job, split, threads))
        out[job["key"]] = row
    return out


def _measure_onnx(job: dict, split, threads: int) -> dict:
    students = {tid: load_student(io.BytesIO(state), arch=job["arch"], stem=job["stem"])
                for tid, state in job["members"].items()}
    try:
        shared, per_trial = export.measure_students(
            students, job["input_size"], split, threads, warmup=job["warmup"], runs=job["runs"])
    except Exception as e:  # noqa: BLE001  an exporter that fails on one network must not
        # cost the sweep its other measurements: the error becomes the row's onnx_error
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"ONNX export/measurement of {job['key']} failed: {type(e).__name__}: {first}",
              flush=True)
        return {"onnx_error": f"{type(e).__name__}: {first}", "per_trial": {}}
    return {**shared, "per_trial": per_trial}
