"""One trial: distil a student from a cached teacher, prune, fine-tune, measure.

`run_trial` is the whole unit of work; the sweep only schedules it (Ray Tune's `tune.report` is
plugged in as `report`). It imports no Ray, so it runs and is tested on a laptop CPU.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import measure
from .config import TrialConfig, check_teacher_cache
from .data import DeviceData, Split, load_split, num_views
from .errors import KDTuneError
from .distill import Distiller, check_method, teacher_mode
from .models import (architecture_signature, create_model, model_family, rebuild_student,
                     save_student)
from .prune import apply_pruning, make_permanent, prune_channels, sparsity
from .storage import atomic_path
from .teacher import prepare_teacher
from .train import (
    make_optimizer,
    make_schedule,
    place_model,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    seed_everything,
    train_epoch,
)

CKPT = "trial_ckpt.pt"
STUDENT = "student.pt"  # models.save_student: reload with models.load_student
Report = Callable[[dict], None]


def provenance(device: torch.device | None = None) -> dict:
    """What a result row needs to be reproduced: code version, libraries, device."""
    import platform
    import subprocess

    import torchvision

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).parent,
                               timeout=5).stdout.strip()
        if sha and dirty:
            sha += "-dirty"
    except (OSError, subprocess.SubprocessError):
        sha = None
    from . import __version__

    out = {"git_sha": sha, "kdtune_version": __version__,
           "python_version": platform.python_version(), "torch_version": torch.__version__,
           "torchvision_version": torchvision.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("ray", "optuna"):
        try:  # metadata, not import: importing Ray to read its version costs seconds
            out[f"{mod}_version"] = version(mod)
        except PackageNotFoundError:
            out[f"{mod}_version"] = None
    if device is not None:
        out["device"] = measure.device_label(device)
    return out


def resolve_cache_mode(cfg: TrialConfig, teacher_passes_per_image: float) -> str:
    """`teacher.cache: auto`: the view cache costs num_views teacher passes per image once; an
    online teacher costs one per image per student epoch. Pick the cheaper for the planned work.
    Feature methods (kd.method fitnets, attention, cosine), ViT teachers and Cutout
    (train.cutout) always run the teacher online."""
    if cfg.kd.alpha == 0:
        return "none"  # the no-KD baseline needs no teacher at all
    if teacher_mode(cfg, "views") == "none":  # a teacher that can only run online
        check_teacher_cache({cfg.kd.method}, cfg.teacher, cfg.kd.alpha)
        return "none"
    if cfg.teacher.cache != "auto":
        return cfg.teacher.cache
    return "views" if teacher_passes_per_image > num_views(cfg.data.augment) else "none"


def _config_hash(cfg: TrialConfig, data_identity: str) -> str:
    """What a checkpoint must match to be resumed: the config minus what does not change the
    training (measurement settings; where this machine keeps caches and data, which differ on
    the machine a sweep at a URI resumes on) plus the data's content."""
    d = cfg.to_dict()
    d.pop("measure")
    d.pop("cache_dir")
    d["data"].pop("root")
    if d["prune"]["method"] == "unstructured":  # keys added with channel pruning: an older
        del d["prune"]["method"], d["prune"]["round_to"]  # checkpoint still matches
    for key in ("warmup_epochs", "cutout"):  # and those added with the ViT recipe
        if not d["train"][key]:
            del d["train"][key]
    d["teacher"] = {k: v for k, v in d["teacher"].items()
                    if not (k in ("warmup_epochs", "ensemble") and not v)}
    if d["kd"]["method"] == "logit":  # and those added with kd.method
        for key in ("method", "feature_weight", "dkd_alpha", "dkd_beta", "dkd_warmup"):
            del d["kd"][key]
    d["data_identity"] = data_identity
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _epoch_timing(history: list[dict]) -> dict:
    """Median per-epoch bookkeeping and whole-epoch time (ms) over the epochs this process ran
    (a resumed trial's earlier epochs have no timing)."""
    timed = [h for h in history if "bookkeeping_ms" in h]
    if not timed:
        return {"bookkeeping_ms": None, "epoch_ms": None}
    return {"bookkeeping_ms": float(np.median([h["bookkeeping_ms"] for h in timed])),
            "epoch_ms": float(np.median([1000 * (h["train_s"] + h["val_s"])
                                         + h["bookkeeping_ms"] for h in timed]))}


def _save_ckpt(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:  # a crash mid-write leaves the previous checkpoint intact
        torch.save(state, tmp)


def run_trial(cfg: TrialConfig, report: Report | None = None, checkpoint_dir: str | Path | None
              = None, resume_from: str | Path | None = None, split: Split | None = None,
              teacher=None, cache_mode: str | None = None, log=print,
              checkpoint_every_s: float = 0.0) -> dict:
    """Train, prune, fine-tune and measure one student; returns the final metrics.

    report(metrics) is called after every epoch (train and fine-tune epochs alike, numbered
    1..train.epochs+prune.finetune_epochs) with epoch, phase, val_acc, train_loss, lr and the
    size metrics. A checkpoint is written to checkpoint_dir/trial_ckpt.pt before each report
    (with checkpoint_every_s > 0, before a report once that long has passed since the last one,
    and at the fine-tune's start and the end; `checkpoint_saved` in the report says which);
    resume_from (a folder holding one) continues where it stopped. `split` and `teacher` let a
    sweep hand in data and a prepared teacher (Ray's object store) instead of loading them.
    """
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    # Resolved once; everything below (data, student, teacher, view cache, evaluation, latency)
    # gets these two booleans and never looks at the device to choose them again.
    precision = resolve_precision(cfg.train.precision, device)
    bf16 = precision == "bf16"
    channels_last = resolve_channels_last(cfg.train.channels_last, device)
    if split is None:
        split = load_split(cfg.data, cfg.cache_dir)
    dd = DeviceData(split, device, augment=cfg.data.augment, resize=cfg.data.resize,
                    channels_last=channels_last)
    total_epochs = cfg.train.epochs + (cfg.prune.finetune_epochs if cfg.prune.ratio > 0 else 0)
    if cache_mode is None:
        cache_mode = resolve_cache_mode(cfg, cfg.train.epochs)
    # the sweep's choice holds for logit methods; feature methods and alpha 0 decide here
    cache_mode = teacher_mode(cfg, cache_mode)
    check_method(cfg, dd.input_size)

    if cfg.kd.alpha > 0:
        if teacher is None:
            teacher = prepare_teacher(cfg, split, dd, want_views=cache_mode == "views", log=log)
        # a teacher handed in by a sweep was prepared elsewhere: bring it to this trial's layout
        teacher.model = place_model(teacher.model, device, channels_last).eval()
        if cache_mode == "views":
            if teacher.views is None:
                raise KDTuneError("teacher.cache: views requested but the teacher has no cache")
            teacher.views = teacher.views.to(device)
            expect = (dd.n_train, num_views(dd.augment), *([len(cfg.teacher.ensemble)]
                                                           if cfg.teacher.ensemble else []),
                      split.num_classes)
            if tuple(teacher.views.shape) != expect:
                raise RuntimeError(f"view cache shape {tuple(teacher.views.shape)} != {expect}")

    seed_everything(cfg.seed)
    student = place_model(create_model(cfg.student.arch, num_classes=split.num_classes,
                                       stem=cfg.student.stem), device, channels_last)
    flops = measure.count_flops(student, (1, 3, dd.input_size, dd.input_size))
    distiller = Distiller(cfg, teacher, cache_mode, device, bf16=bf16,
                          input_size=dd.input_size, channels_last=channels_last, log=log)
    distiller.attach(student)
    # the hooks come off on every exit: the student (and a teacher handed in) leave as they came
    try:
        steps = dd.steps_per_epoch(cfg.train.batch_size)
        ft_lr = cfg.prune.finetune_lr or cfg.train.lr / 10

        def trained():
            # the student first, so its parameters keep their optimizer slots with or without a
            # regressor beside it (FitNets), which trains with the same optimizer but is not in it
            return torch.nn.ModuleList([student, *distiller.extra_modules()])

        def new_phase(phase: str):
            if phase == "train":
                opt = make_optimizer(trained(), cfg.train.optimizer, cfg.train.lr,
                                     cfg.train.weight_decay, cfg.train.momentum)
                return opt, make_schedule(opt, cfg.train.schedule, cfg.train.lr,
                                          cfg.train.epochs * steps,
                                          round(cfg.train.warmup_epochs * steps))
            opt = make_optimizer(trained(), cfg.train.optimizer, ft_lr, cfg.train.weight_decay,
                                 cfg.train.momentum)
            return opt, make_schedule(opt, "cosine", ft_lr, cfg.prune.finetune_epochs * steps)

        prune_cut = None  # fraction of channels the channel pruning actually removed

        def prune_now():
            nonlocal flops, prune_cut
            p = cfg.prune
            if p.method == "unstructured":
                apply_pruning(student, p.ratio, p.scope, p.include_linear)
                return
            example = torch.zeros(1, 3, dd.input_size, dd.input_size, device=device)
            distiller.before_prune(student)
            prune_cut = prune_channels(student, p.ratio, example, p.scope, p.round_to)
            place_model(student, device, channels_last)  # the new, narrower tensors too
            distiller.attach(student)  # FitNets: a regressor for the narrower last stage
            flops = measure.count_flops(student, (1, 3, dd.input_size, dd.input_size))
            log(f"channel pruning: {prune_cut:.1%} of conv channels removed (asked "
                f"{p.ratio:.1%}, widths rounded to multiples of {p.round_to}), "
                f"{flops / 1e6:.1f} MFLOPs per image left")

        chash = _config_hash(cfg, split.identity)
        start_epoch, history, step_s = 1, [], []
        phase = "train"
        opt, sched = new_phase("train")
        if resume_from is not None and (Path(resume_from) / CKPT).is_file():
            state = torch.load(Path(resume_from) / CKPT, map_location=device, weights_only=True)
            if state["config_hash"] != chash:
                raise KDTuneError(f"{resume_from}: checkpoint was written by a different config; "
                                  "use a fresh output folder")
            phase = state["phase"]
            if phase == "finetune":
                # pruned: narrower layers (channel) or masks (unstructured), both rebuilt from the
                # saved tensors, as every reload of a student is
                student = place_model(rebuild_student(cfg.student.arch, cfg.student.stem,
                                                      state["model"]), device, channels_last)
                flops = measure.count_flops(student, (1, 3, dd.input_size, dd.input_size))
                prune_cut = state.get("prune_cut")
                distiller.attach(student)
                opt, sched = new_phase("finetune")
            else:
                student.load_state_dict(state["model"])
            distiller.load_state_dict(state.get("distiller", {}))
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start_epoch = state["epoch"] + 1
            history, step_s = state["history"], state["step_s"]
            log(f"resuming from epoch {state['epoch']} ({phase})")

        ckpt_path = Path(checkpoint_dir) / CKPT if checkpoint_dir else None
        if ckpt_path:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        eval_bs = cfg.train.eval_batch_size
        # Parameter counts and sizes change only when pruning does. Measuring them every epoch cost
        # more than a fast GPU epoch's training (zlib over the state dict: ~240 ms for
        # mobilenet_v3_small on a 2-core CPU); they are measured at the start and after pruning,
        # and still reported every epoch, since a multi-objective search reads them from any report.
        sizes = None
        last_ckpt = time.perf_counter()
        for epoch in range(start_epoch, total_epochs + 1):
            if epoch == cfg.train.epochs + 1 and phase == "train":
                phase = "finetune"
                prune_now()
                sizes = None
                opt, sched = new_phase("finetune")
            lr = opt.param_groups[0]["lr"]
            t0 = time.perf_counter()
            distiller.epoch = epoch
            loss, n_steps = train_epoch(student, dd, opt, sched, cfg.train.batch_size,
                                        cfg.seed * 100_003 + epoch, distiller.loss, bf16=bf16,
                                        cutout=cfg.train.cutout)
            t_train = time.perf_counter()
            step_s.append((t_train - t0) / n_steps)
            val = measure.accuracy(student, dd.eval_batches("val", eval_bs), autocast_bf16=bf16)
            t_val = time.perf_counter()
            if sizes is None:
                sizes = {**measure.count_params(student), **measure.model_size_mb(student)}
            row = {"epoch": epoch, "phase": phase, "val_acc": val, "train_loss": loss, "lr": lr,
                   "flops": flops, **sizes, "train_s": t_train - t0, "val_s": t_val - t_train}
            history.append(row)
            # A resume checkpoint every epoch, or, with checkpoint_every_s, once that long has
            # passed (a sweep: on a GPU an epoch takes a second, and each checkpoint a trial hands
            # Tune also forces a whole experiment snapshot), and always on entering the fine-tune
            # and at the last epoch. row["checkpoint_saved"] tells the report whether there is a
            # new one to hand over.
            row["checkpoint_saved"] = bool(ckpt_path) and (
                time.perf_counter() - last_ckpt >= checkpoint_every_s or epoch == total_epochs
                or (phase == "finetune" and epoch == cfg.train.epochs + 1))
            if row["checkpoint_saved"]:
                last_ckpt = time.perf_counter()
                _save_ckpt(ckpt_path, {
                    "config_hash": chash, "epoch": epoch, "phase": phase, "history": history,
                    "step_s": step_s, "model": student.state_dict(), "prune_cut": prune_cut,
                    "distiller": distiller.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
            log(f"epoch {epoch}/{total_epochs} [{phase}] loss {loss:.4f} val_acc {val:.2%} "
                f"lr {lr:.3g} ({(time.perf_counter() - t0):.1f}s)")
            # The last epoch is reported after pruning and measuring, merged with the final
            # metrics: a scheduler may stop a trial at its last report, and the final numbers
            # must be in the report that the searcher reads.
            if report is not None and epoch < total_epochs:
                report(dict(row))
            # Everything in the epoch that is neither training nor validation: sizes, checkpoint,
            # the report (which, under Ray Tune, persists the checkpoint to the run folder).
            # Known only after the report, so it lands in the history, not in that report.
            row["bookkeeping_ms"] = 1000 * (time.perf_counter() - t_val)

        if cfg.prune.ratio > 0 and phase == "train":
            prune_now()  # ratio > 0 with no fine-tune epochs: prune and measure as is
        distiller.close()  # the hooks go: the student (and a shared teacher) leave as they came
        make_permanent(student)
        sparse = sparsity(student, cfg.prune.include_linear)
        result = {
            "val_acc": measure.accuracy(student, dd.eval_batches("val", eval_bs),
                                        autocast_bf16=bf16),
            "test_acc": measure.accuracy(student, dd.eval_batches("test", eval_bs),
                                         autocast_bf16=bf16),
            "teacher_name": cfg.teacher.name(), "student_family": model_family(cfg.student.arch),
            "teacher_members": json.dumps(teacher.members) if getattr(teacher, "members", None)
            else None,
            "teacher_val_acc": teacher.val_acc if teacher is not None else None,
            "teacher_test_acc": teacher.test_acc if teacher is not None else None,
            **sparse, **measure.count_params(student), **measure.model_size_mb(student),
            "flops": flops,
            # the cut in prune.ratio's own unit: channels removed, or weights zeroed
            "prune_ratio_achieved": (prune_cut or 0.0) if cfg.prune.method == "channel"
            else sparse["sparsity_pruned"],
            "arch_signature": architecture_signature(student, cfg.student.arch, cfg.student.stem,
                                                     dd.input_size),
            "epochs_trained": total_epochs, "teacher_cache": cache_mode,
            "kd_method": distiller.method, "kd_feature_weight": distiller.feature_weight,
            "kd_dkd_warmup_epochs": distiller.dkd_warmup,
            "view_cache_build_s": getattr(teacher, "views_build_s", None),
            "teacher_train_s": getattr(teacher, "train_s", None),
            "train_step_ms": 1000 * float(np.median(step_s)) if step_s else None,
            **_epoch_timing(history),
            "device": measure.device_label(device), "precision": precision,
            "channels_last": channels_last, "dataset_label": split.label,
        }
        if cfg.measure.latency:
            m = cfg.measure
            result.update(measure.measure_speed(
                student, device, input_size=dd.input_size, batch=m.throughput_batch,
                warmup=m.warmup, runs=m.runs, threads=m.cpu_threads if device.type == "cpu"
                else None, bf16=bf16, channels_last=channels_last))
        result["wall_s"] = time.perf_counter() - t_start
        if checkpoint_dir:  # final weights beside the resume checkpoint, before the last report
            save_student(student, Path(checkpoint_dir) / STUDENT, cfg.student.arch,
                         cfg.student.stem)
        if report is not None:
            report({**history[-1], **result, "final": True})
        result["history"] = history
        result["model"] = student
        return result
    finally:
        distiller.close()
