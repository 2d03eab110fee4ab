"""Teachers: trained once, cached by content, and their logits precomputed per augmentation view.

A distillation notebook runs the teacher forward on every student step. Here each distinct teacher
(hash of its resolved config, the data identity and RECIPE_VERSION) is trained once into
`<cache_dir>/teachers/<key>/`, and a second request loads it.

View-exact logit cache: with crop(pad 4)+flip an image has only 162 views, so the teacher's logits
for every view of every training image are computed once (fp16; CIFAR-10: 45k x 162 x 10 x 2 B =
146 MB) and a student step reads the logits of exactly the view it trains on. The teacher never
runs inside a trial, and teacher and student always see the same pixels. It costs 162 teacher
passes per image once; an online teacher costs one pass per image per epoch per trial, so the
cache wins when trials x epochs > 162 (a sweep), and may lose for one short trial.

Ensembles (`teacher.ensemble`): each member is a teacher of its own, trained, cached and
view-cached exactly as above (a member shared with another run or sweep is a cache hit); the
ensemble is a module returning the members' logits stacked, (batch, members, classes), and its
view cache stacks theirs. The student distils from the members' average T-softened
probabilities (kdtune.losses.ensemble_logits, where T is the trial's, so it cannot be cached).
Vision transformers run online, never view-cached: 162 views of a ViT-Tiny forward cost hours on
a CPU, and a ViT's 4x4 patches make a crop by one pixel a different input anyway.

Concurrency and crashes: two processes asking for the same teacher take a file lock, so one builds
and the other loads; files are written to a temporary name and renamed into place, and each carries
a sha256 in meta.json that is checked on load, so a torn or corrupt file is rebuilt, never trusted.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from .config import TrialConfig
from .data import DeviceData, Split, num_views
from .losses import ensemble_logits
from .measure import accuracy
from .models import create_model, model_family
from .storage import atomic_path
from .train import fit, place_model, resolve_precision

RECIPE_VERSION = 1  # bump when the teacher training recipe changes: old caches stop matching


@dataclass
class Teacher:
    key: str
    model: torch.nn.Module  # eval mode, on the device
    val_acc: float
    test_acc: float
    train_s: float  # time it took to train when it was built (0 for a pretrained 0-epoch one)
    views: torch.Tensor | None = None  # (n_train, n_views, classes) fp16 on the device
    views_build_s: float | None = None
    cache_hit: bool = False
    # an ensemble's members: [{"name", "val_acc", "test_acc"}], None for one teacher
    members: list[dict] | None = None


class TeacherEnsemble(nn.Module):
    """The members' logits stacked: (batch, members, classes)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], 1)


class _MeanProbs(nn.Module):
    """An ensemble's prediction, for its accuracy: its target at T = 1, the log of the
    members' mean probability."""

    def __init__(self, ensemble: TeacherEnsemble):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble_logits(self.ensemble(x), 1.0)


def has_vit(cfg: TrialConfig) -> bool:
    """Whether any teacher of cfg (one, or an ensemble member) is a vision transformer, which
    always runs online."""
    return any(model_family(m.arch) == "vit" for m in cfg.teacher.members())


def member_configs(cfg: TrialConfig) -> list[TrialConfig]:
    """One config per teacher: the ensemble's members as single teachers (or cfg itself)."""
    if not cfg.teacher.ensemble:
        return [cfg]
    out = []
    for m in cfg.teacher.members():
        c = copy.deepcopy(cfg)
        m.cache, m.ensemble = cfg.teacher.cache, None
        c.teacher = m
        out.append(c)
    return out


def teacher_key(cfg: TrialConfig, split: Split) -> str:
    if cfg.teacher.ensemble:
        keys = [teacher_key(c, split) for c in member_configs(cfg)]
        return "ens-" + hashlib.sha256("+".join(keys).encode()).hexdigest()[:16]
    t = cfg.teacher
    recipe = {k: getattr(t, k) for k in ("arch", "stem", "pretrained", "epochs", "lr",
                                         "batch_size", "weight_decay", "optimizer",
                                         "label_smoothing", "seed")}
    if t.warmup_epochs:  # added with the ViT recipe: an older CNN teacher keeps its key
        recipe["warmup_epochs"] = t.warmup_epochs
    recipe.update(data=split.identity, augment=cfg.data.augment, resize=cfg.data.resize,
                  eval_batch=cfg.train.eval_batch_size, version=RECIPE_VERSION)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def _save_checked(obj, path: Path) -> str:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        digest = _sha256(tmp)
    return digest


def _valid(path: Path, digest: str | None) -> bool:
    return digest is not None and path.is_file() and _sha256(path) == digest


def build_view_cache(model: torch.nn.Module, dd: DeviceData, num_classes: int,
                     batch_size: int = 1024, log=print, *, bf16: bool) -> torch.Tensor:
    """Teacher logits for every (image, view): (n_train, n_views, classes) fp16. The batches
    come in dd's layout (dd.channels_last); `bf16` autocasts the teacher's forward."""
    n, nv = dd.n_train, num_views(dd.augment)
    out = torch.empty((n, nv, num_classes), dtype=torch.float16, device=dd.device)
    model.eval()
    t0, last = time.perf_counter(), 0.0
    with torch.inference_mode(), torch.autocast(dd.device.type, torch.bfloat16, enabled=bf16):
        for v in range(nv):
            for s in range(0, n, batch_size):
                idx = torch.arange(s, min(s + batch_size, n), device=dd.device)
                out[idx, v] = model(dd.view_batch(idx, v)).to(torch.float16)
            now = time.perf_counter() - t0
            if now - last > 10 or v == nv - 1:  # progress on long work, not a line per view
                last = now
                log(f"teacher view cache: {v + 1}/{nv} views, {now:.0f}s")
    return out


def _train_teacher(cfg: TrialConfig, dd: DeviceData, num_classes: int, bf16: bool,
                   log) -> torch.nn.Module:
    t = cfg.teacher
    torch.manual_seed(t.seed)
    model = create_model(t.arch, num_classes=num_classes, stem=t.stem, pretrained=t.pretrained)
    model = place_model(model, dd.device, dd.channels_last)
    if t.epochs:
        fit(model, dd, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size,
            weight_decay=t.weight_decay, optimizer=t.optimizer, schedule="cosine",
            momentum=0.9, seed=t.seed, label_smoothing=t.label_smoothing, bf16=bf16,
            log=lambda m: log(f"teacher {t.name()}: {m}"),
            eval_batch_size=cfg.train.eval_batch_size, warmup_epochs=t.warmup_epochs or 0.0)
    return model.eval()


def prepare_teacher(cfg: TrialConfig, split: Split, dd: DeviceData, want_views: bool,
                    log=print) -> Teacher:
    """Load the teacher for `cfg` from the cache, or train it (and its view cache) once.

    It runs under the trial's switches: the layout of `dd` (dd.channels_last) and
    `train.precision` resolved for dd's device, the one rule run_trial resolves it by too.
    An ensemble prepares each member so and stacks them (TeacherEnsemble); a vision
    transformer never gets a view cache (it runs online)."""
    want_views = want_views and not has_vit(cfg)  # one ViT member: the ensemble runs online
    if cfg.teacher.ensemble:
        return _prepare_ensemble(cfg, split, dd, want_views, log)
    bf16 = resolve_precision(cfg.train.precision, dd.device) == "bf16"
    eval_bs = cfg.train.eval_batch_size
    key = teacher_key(cfg, split)
    root = Path(cfg.cache_dir).expanduser() / "teachers"
    folder = root / key
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        hit = bool(meta and _valid(folder / "model.pt", meta.get("sha256", {}).get("model.pt")))
        model = create_model(cfg.teacher.arch, num_classes=split.num_classes,
                             stem=cfg.teacher.stem)
        if hit:
            model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu",
                                             weights_only=True))
            model = place_model(model, dd.device, dd.channels_last).eval()
            log(f"teacher {cfg.teacher.name()}: cache hit {key} "
                f"(val {meta['val_acc']:.2%}, test {meta['test_acc']:.2%})")
        else:
            if folder.exists():
                log(f"teacher cache {key}: missing or corrupt, rebuilding")
                shutil.rmtree(folder)
            t0 = time.perf_counter()
            model = _train_teacher(cfg, dd, split.num_classes, bf16, log)
            train_s = time.perf_counter() - t0
            tmp = root / f".{key}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            meta = {
                "key": key, "arch": cfg.teacher.arch, "stem": cfg.teacher.stem,
                "config": cfg.to_dict()["teacher"], "data": split.label,
                "val_acc": accuracy(model, dd.eval_batches("val", eval_bs),
                                    autocast_bf16=bf16),
                "test_acc": accuracy(model, dd.eval_batches("test", eval_bs),
                                     autocast_bf16=bf16),
                "train_s": train_s,
                "sha256": {"model.pt": _save_checked(state, tmp / "model.pt")},
            }
            _write_json(tmp / "meta.json", meta)
            os.replace(tmp, folder)  # the whole folder appears at once or not at all
            log(f"teacher {cfg.teacher.name()}: trained in {train_s:.1f}s "
                f"(val {meta['val_acc']:.2%}, test {meta['test_acc']:.2%}) -> {folder}")
        teacher = Teacher(key, model, meta["val_acc"], meta["test_acc"], meta["train_s"],
                          cache_hit=hit)
        if want_views:
            vpath = folder / "views.pt"
            if _valid(vpath, meta["sha256"].get("views.pt")):
                teacher.views = torch.load(vpath, map_location=dd.device, weights_only=True)
                teacher.views_build_s = meta.get("views_build_s")
            else:
                t0 = time.perf_counter()
                teacher.views = build_view_cache(model, dd, split.num_classes, eval_bs, log,
                                                 bf16=bf16)
                teacher.views_build_s = time.perf_counter() - t0
                meta["sha256"]["views.pt"] = _save_checked(teacher.views.cpu(), vpath)
                meta["views_build_s"] = teacher.views_build_s
                _write_json(meta_path, meta)
                log(f"teacher view cache: built in {teacher.views_build_s:.1f}s "
                    f"({teacher.views.numel() * 2 / 1e6:.0f} MB fp16)")
    return teacher


def _prepare_ensemble(cfg: TrialConfig, split: Split, dd: DeviceData, want_views: bool,
                      log) -> Teacher:
    configs = member_configs(cfg)
    members = [prepare_teacher(c, split, dd, want_views, log) for c in configs]
    model = TeacherEnsemble([t.model for t in members]).eval()
    bf16 = resolve_precision(cfg.train.precision, dd.device) == "bf16"
    mean = _MeanProbs(model)
    eval_bs = cfg.train.eval_batch_size
    teacher = Teacher(
        teacher_key(cfg, split), model,
        accuracy(mean, dd.eval_batches("val", eval_bs), autocast_bf16=bf16),
        accuracy(mean, dd.eval_batches("test", eval_bs), autocast_bf16=bf16),
        sum(t.train_s for t in members), cache_hit=all(t.cache_hit for t in members),
        members=[{"name": c.teacher.name(), "val_acc": t.val_acc, "test_acc": t.test_acc}
                 for c, t in zip(configs, members)])
    if want_views and all(t.views is not None for t in members):
        teacher.views = torch.stack([t.views for t in members], 2)  # (n, views, members, C)
        teacher.views_build_s = sum(t.views_build_s or 0.0 for t in members)
    log(f"teacher {cfg.teacher.name()}: val {teacher.val_acc:.2%}, test {teacher.test_acc:.2%} "
        "(mean of the members' probabilities; members: "
        + ", ".join(f"{t.test_acc:.2%}" for t in members) + " test)")
    return teacher
