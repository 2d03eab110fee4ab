"""Typed, strictly checked configuration.

Configs are inert YAML (`yaml.safe_load`, never code). Every section is a dataclass whose fields
carry their allowed range or choices; `build()` rejects unknown keys, wrong types and values out of
range with a KDTuneError naming the dotted key and what is allowed, so the CLI can print one line
and exit 2 instead of a traceback twenty frames into training.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import KDTuneError

DATASETS = ("cifar10", "cifar100", "imagefolder", "synthetic")
STEMS = ("standard", "cifar")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle")
PRUNE_SCOPES = ("global", "layerwise")
PRUNE_METHODS = ("unstructured", "channel")  # see kdtune/prune.py for what each can move
TEACHER_CACHES = ("views", "none", "auto")
# kd.method: what the student learns from the teacher (kdtune/distill.py, kdtune/losses.py).
# Logit methods read the teacher's logits (the view cache serves them); feature methods need its
# feature maps, so the teacher runs online on the student's batch.
KD_METHODS = ("logit", "fitnets", "attention", "dkd", "cosine")
FEATURE_METHODS = ("fitnets", "attention", "cosine")
# of those, the ones that read feature maps at the registry's stages (cosine reads the
# classifier's input, which every registry model has)
STAGE_METHODS = ("fitnets", "attention")
LOGIT_METHODS = ("logit", "dkd")
# kd.feature_weight when not set: mdistiller's CIFAR weights for these exact loss forms
# (FitNets' hint MSE 100; attention transfer 1000, the paper's beta = 1e3); cosine 1, the
# weight of a term in [0, 2] beside a CE of ~1 (the PyTorch KD tutorial mixes 0.25 : 0.75)
FEATURE_WEIGHT_DEFAULTS = {"fitnets": 100.0, "attention": 1000.0, "cosine": 1.0}
# keys that mean something for some methods only: (key, the methods it applies to)
KD_METHOD_KEYS = {"feature_weight": FEATURE_METHODS, "dkd_alpha": ("dkd",),
                  "dkd_beta": ("dkd",), "dkd_warmup": ("dkd",)}
PRETRAINED = (None, "imagenet")
# What train.* and teacher.* keys left at null resolve to, per architecture family
# (kdtune.models.model_family), in `resolve_recipe`. CNNs: the CIFAR ResNet recipe (He et al.
# 2016: SGD 0.1, momentum 0.9, weight decay 5e-4 as in the CIFAR KD papers), no warm-up. ViTs
# trained from scratch on CIFAR diverge or stall under that recipe (SGD 0.1 on LayerNorm nets);
# they get DeiT's (Touvron et al. 2021, arXiv:2012.12877): AdamW, weight decay 0.05 (not on
# biases, norms and embeddings, kdtune.train.make_optimizer), lr 1e-3 at batch 256 (the CIFAR
# from-scratch ViTs of Lee et al. 2021, arXiv:2112.13492, use 1e-3 too; DeiT's 5e-4 x batch/512
# is for 300 ImageNet epochs) and a linear warm-up: 10 % of the epochs, at most DeiT's 5, as
# attention logits of an untrained ViT blow up under a full-size first step.
# ViTs also get Cutout 16 px (DeVries & Taylor 2017's CIFAR-10 size): they lack a CNN's
# locality prior and overfit 45k images where a ResNet does not; RandAugment/mixup, DeiT's
# heavier choices, would need per-image ops or mixed labels the trial's losses do not take.
RECIPES = {
    "cnn": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup": (0.0, 0.0),
            "cutout": 0},
    "vit": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup": (0.1, 5.0),
            "cutout": 16},
}
# auto: on for CUDA (where bf16 autocast and channels_last pay off), off for CPU. Forcing them on
# is how the CPU test suite runs the CUDA code paths.
CHANNELS_LAST = ("auto", True, False)
PRECISIONS = ("auto", "bf16", "fp32")
# auto: on when onnx, onnxruntime and onnxscript are installed (kdtune.export.available)
ONNX_MEASURE = ("auto", True, False)
# run folders at a URI: what pyarrow.fs.FileSystem.from_uri opens (kdtune.storage)
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")


def _model_names() -> tuple[str, ...]:
    # Imported lazily: the registry pulls in torchvision, which `kdtune validate` should not pay
    # for until a model name actually has to be checked.
    from .models import list_models

    return tuple(list_models())


def _f(default, *, ge=None, gt=None, le=None, lt=None, choices=None, doc=""):
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "doc": doc}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = _f("cifar10", choices=DATASETS, doc="cifar10/cifar100: torchvision's "
                      "copy (downloaded into root); imagefolder: your own images; synthetic: "
                      "generated patterns, for tests")
    # cifar10/cifar100: torchvision download dir; imagefolder: a folder or .tar.gz with
    # train/<class>/ and test/<class>/; synthetic: unused.
    root: str | None = _f(None, doc="cifar10/cifar100: download folder (default: "
                          "cache_dir/torchvision); imagefolder: a folder or .tar.gz holding "
                          "train/<class>/ and test/<class>/ (required)")
    label: str | None = _f(None, doc="human name of the data shown next to every number")
    val_size: int = _f(5000, ge=1, doc="validation images held out of train, class-balanced; "
                       "every choice is made on them")
    train_subset: int | None = _f(None, ge=1, doc="train on this many of the remaining "
                                  "training images (class-balanced); null: all")
    test_subset: int | None = _f(None, ge=1, doc="report test accuracy on this many test "
                                 "images (class-balanced); null: all")
    augment: bool = _f(True, doc="random crop (pad 4) + horizontal flip, on the device")
    resize: int | None = _f(None, ge=8, doc="upsample batches to this size (224: ImageNet stem)")
    split_seed: int = _f(0, ge=0, doc="fixed across trials so every trial sees the same val split")
    synthetic_train: int = _f(2000, ge=10, doc="synthetic: training images generated")
    synthetic_test: int = _f(500, ge=10, doc="synthetic: test images generated")
    synthetic_classes: int = _f(10, ge=2, doc="synthetic: number of classes")


@dataclass
class TeacherConfig:
    arch: str = _f("resnet18", choices=_model_names, doc="the teacher's architecture "
                   "(the same registry as student.arch)")
    stem: str = _f("cifar", choices=STEMS, doc="standard: 7x7 stride 2 + max-pool (ImageNet); "
                   "cifar: 3x3 stride 1, no max-pool; a ViT has none (leave cifar)")
    pretrained: str | None = _f(None, choices=PRETRAINED, doc="imagenet: start from "
                                "torchvision's ImageNet weights (resnet18/34/50, "
                                "mobilenet_v3_small)")
    epochs: int = _f(30, ge=0, doc="training epochs of the teacher (trained once, cached); 0: "
                     "no training (its pretrained or initial weights)")
    # lr, weight_decay, optimizer, warmup_epochs: null is the teacher's family recipe (RECIPES)
    lr: float | None = _f(None, gt=0, doc="null: per architecture family (RECIPES)")
    batch_size: int = _f(256, ge=1, doc="the teacher's training batch size")
    weight_decay: float | None = _f(None, ge=0, doc="null: per architecture family")
    optimizer: str | None = _f(None, choices=OPTIMIZERS, doc="null: per architecture family")
    warmup_epochs: float | None = _f(None, ge=0, doc="linear lr warm-up before the cosine "
                                     "decay; null: per architecture family")
    label_smoothing: float = _f(0.0, ge=0, lt=1, doc="label smoothing of the teacher's "
                                "cross-entropy")
    seed: int = _f(0, ge=0, doc="fixed, not the trial seed, so all trials share one teacher")
    # views: precompute logits of all 162 crop/flip views once; none: teacher forward per step;
    # auto: views for sweeps, none for a lone trial (see README, "Teacher cache").
    cache: str = _f("auto", choices=TEACHER_CACHES, doc="views: the teacher's logits of all "
                    "162 crop/flip views, computed once; none: the teacher runs on each "
                    "batch; auto: views when the sweep's trials x epochs (a lone trial's epochs) "
                    "exceed 162 (README, Teacher cache)")
    ensemble: list | None = _f(None, doc="teachers, each an arch name or a mapping of teacher "
                               "keys (arch required; the rest default to this section's); "
                               "the student learns from the average of their T-softened "
                               "probabilities. Replaces teacher.arch/stem/...; a list of one "
                               "is that teacher alone")

    def members(self) -> list["TeacherConfig"]:
        """The teachers this config names: the ensemble's members, or itself."""
        if not self.ensemble:
            return [self]
        own = {k: v for k, v in dataclasses.asdict(self).items() if k in MEMBER_KEYS}
        return [TeacherConfig(**{**own, **m}) for m in self.ensemble]

    def name(self) -> str:
        """"resnet20/cifar", or "ensemble resnet20/cifar + vit_tiny" (a ViT has no stem)."""
        names = [_arch_name(t.arch, t.stem) for t in self.members()]
        return names[0] if len(names) == 1 else "ensemble " + " + ".join(names)


# what an ensemble member may set: everything that makes one teacher (not cache, not ensemble)
MEMBER_KEYS = ("arch", "stem", "pretrained", "epochs", "lr", "batch_size", "weight_decay",
               "optimizer", "warmup_epochs", "label_smoothing", "seed")


def _arch_name(arch: str, stem: str) -> str:
    from .models import model_family

    return arch if model_family(arch) == "vit" else f"{arch}/{stem}"


@dataclass
class StudentConfig:
    arch: str = _f("resnet20", choices=_model_names, doc="the student's architecture: CNNs and "
                   "ViTs (vit_*); any can be teacher or student")
    stem: str = _f("cifar", choices=STEMS, doc="as teacher.stem; a ViT has none (leave cifar)")


@dataclass
class TrainConfig:
    epochs: int = _f(30, ge=1, doc="the student's training epochs (before pruning)")
    batch_size: int = _f(256, ge=1, doc="the student's training batch size")
    lr: float | None = _f(None, gt=0, doc="null: the student's family recipe (RECIPES)")
    weight_decay: float | None = _f(None, ge=0, doc="null: per architecture family")
    optimizer: str | None = _f(None, choices=OPTIMIZERS, doc="null: per architecture family")
    warmup_epochs: float | None = _f(None, ge=0, doc="linear lr warm-up before the cosine "
                                     "decay (schedule: cosine only); null: per family")
    cutout: int | None = _f(None, ge=0, doc="Cutout square (px) erased from each student "
                            "training image, 0: off; null: per family (ViT 16). The teacher "
                            "then runs online: the view cache holds un-erased views")
    momentum: float = _f(0.9, ge=0, lt=1, doc="SGD's (Nesterov) momentum")
    schedule: str = _f("cosine", choices=SCHEDULES, doc="learning-rate schedule over the "
                       "training epochs")
    eval_batch_size: int = _f(1024, ge=1, doc="batch size of every evaluation (students and "
                              "teachers)")
    channels_last: str | bool = _f("auto", choices=CHANNELS_LAST,
                                   doc="NHWC memory layout for models and batches")
    precision: str = _f("auto", choices=PRECISIONS, doc="bf16: autocast forward passes")


@dataclass
class KDConfig:
    method: str = _f("logit", choices=KD_METHODS,
                     doc="logit: Hinton KD; fitnets: + feature hints through a regressor; "
                         "attention: + attention transfer; dkd: decoupled KD; cosine: + "
                         "cosine loss on the embeddings before the classifier (README)")
    temperature: float = _f(4.0, gt=0, doc="T: softens teacher and student logits in every "
                            "method's KD term; inert at alpha 0")
    alpha: float = _f(0.9, ge=0, le=1, doc="weight of the teacher's logit term (logit, "
                      "fitnets, attention); 0 turns distillation off for every method")
    label_smoothing: float = _f(0.05, ge=0, lt=1, doc="label smoothing of the student's "
                                "cross-entropy term (also at alpha 0)")
    feature_weight: float | None = _f(None, ge=0, doc="fitnets/attention/cosine: weight of "
                                      "the feature loss; default 100 (fitnets), 1000 "
                                      "(attention), 1 (cosine)")
    dkd_alpha: float = _f(1.0, ge=0, doc="dkd: weight of TCKD (target vs non-target)")
    dkd_beta: float = _f(8.0, ge=0, doc="dkd: weight of NCKD (among non-target classes)")
    dkd_warmup: int | None = _f(None, ge=0, doc="dkd: epochs over which the DKD term ramps "
                                "in, weight min(epoch / warmup, 1); default train.epochs / 12 "
                                "rounded, at least 1 (the paper: 20 of 240)")

    def resolved_feature_weight(self) -> float | None:
        if self.method not in FEATURE_METHODS:
            return None
        return FEATURE_WEIGHT_DEFAULTS[self.method] if self.feature_weight is None \
            else self.feature_weight

    def resolved_dkd_warmup(self, train_epochs: int) -> int | None:
        if self.method != "dkd":
            return None
        if self.dkd_warmup is not None:
            return self.dkd_warmup
        return max(1, int(train_epochs / 12 + 0.5))  # half up: 30 epochs -> 3, not 2


@dataclass
class PruneConfig:
    method: str = _f("unstructured", choices=PRUNE_METHODS,
                     doc="unstructured: zero single weights (dense kernels: latency and dense "
                         "size unchanged); channel: remove whole channels (narrower layers)")
    ratio: float = _f(0.0, ge=0, lt=1, doc="fraction removed: of conv weights (unstructured) "
                      "or of conv channels (channel)")
    scope: str = _f("global", choices=PRUNE_SCOPES, doc="global: one L1 ranking over all "
                    "layers; layerwise: the ratio in every layer")
    round_to: int = _f(8, ge=1, doc="channel: kept widths are multiples of this (1: exact)")
    finetune_epochs: int = _f(0, ge=0, doc="epochs of fine-tuning (KD loss as in training) "
                              "after pruning; run only when ratio > 0")
    include_linear: bool = _f(False, doc="unstructured: prune Linear layers too (needed for "
                              "ViTs), not only convolutions")
    finetune_lr: float | None = _f(None, gt=0, doc="default: train.lr / 10")


@dataclass
class MeasureConfig:
    latency: bool = _f(True, doc="measure batch-1 latency and throughput of the student")
    warmup: int = _f(10, ge=0, doc="untimed calls before the latency is timed")
    runs: int = _f(50, ge=1, doc="timed batch-1 calls: median, p10 and p90 are reported")
    throughput_batch: int = _f(256, ge=1, doc="batch size of the throughput measurement")
    cpu_threads: int = _f(1, ge=1, doc="fixed thread count for CPU latency, so runs compare")
    onnx: str | bool = _f("auto", choices=ONNX_MEASURE,
                          doc="after a sweep, export every completed student to ONNX (fp32 and "
                              "static INT8) and measure both in onnxruntime on the CPU with "
                              "cpu_threads threads; auto: when onnxruntime is installed")


@dataclass
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    seed: int = _f(0, ge=0, doc="the trial's seed (student init, batches); a sweep sets it "
                   "from search.seeds")
    device: str = _f("auto", doc="where the trial runs: auto | cpu | cuda | cuda:N; auto: "
                     "cuda when torch sees a GPU, else cpu")
    cache_dir: str = _f("~/.cache/kdtune", doc="teacher and decoded-data caches")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        return flatten(self.to_dict())


# --- the search section of a sweep YAML ---------------------------------------------------

PARAM_TYPES = ("uniform", "loguniform", "int", "choice", "grid")
SAMPLERS = ("tpe", "nsga2", "random", "grid")
SCHEDULERS = ("asha", "fifo")
MODES = ("max", "min")
# Objectives must be in every per-epoch report (Ray's OptunaSearch reads the last one), so only
# metrics a trial can compute cheaply each epoch are allowed.
OBJECTIVE_METRICS = ("val_acc", "size_mb_dense", "size_mb_sparse", "size_mb_disk", "params",
                     "nonzero_params", "flops")


@dataclass
class ParamSpec:
    type: str = _f("choice", choices=PARAM_TYPES, doc="uniform, loguniform, int: a range "
                   "(low/high); choice: listed values for the sampler; grid: listed values, "
                   "every combination (search.sampler: grid)")
    low: float | None = _f(None, doc="uniform/loguniform/int: lowest value (loguniform: > 0)")
    high: float | None = _f(None, doc="uniform/loguniform/int: highest value (above low)")
    values: list | None = _f(None, doc="choice/grid: the values, each checked like a "
                             "hand-written config")
    step: float | None = _f(None, gt=0, doc="uniform/int: sample on low + k x step (int: an "
                            "integer; not with loguniform)")


@dataclass
class AshaConfig:
    grace_period: int = _f(1, ge=1, doc="epochs every trial runs before ASHA may stop it")
    reduction_factor: float = _f(2.0, gt=1, doc="keep the best 1/reduction_factor at each "
                                 "rung; rungs at grace_period x reduction_factor^k epochs")
    max_t: int | None = _f(None, ge=1, doc="default: train.epochs + prune.finetune_epochs")


@dataclass
class ResourcesConfig:
    cpu: float = _f(1.0, gt=0, doc="CPUs per trial (also its torch threads)")
    gpu: float | None = _f(None, ge=0, le=1, doc="GPU fraction per trial; default: 1 if GPUs")


@dataclass
class SearchConfig:
    name: str | None = _f(None, doc="the sweep's name: run folder results/<name>, Optuna "
                          "study and MLflow experiment; default: the YAML file's stem")
    space: dict = _f({}, doc="dotted trial key (or stem: both stems) -> a parameter spec "
                     "(search.space.KEY.*); data.* and seed cannot be searched")
    searcher: str = _f("optuna", choices=("optuna",), doc="who proposes configs")
    sampler: str = _f("tpe", choices=SAMPLERS, doc="Optuna's sampler, seeded by search_seed; "
                      "nsga2 for several objectives; grid needs every space entry of type grid")
    objectives: dict = _f({"val_acc": "max"}, doc="metric -> max or min, in order: ASHA "
                          "judges the first; metrics: see below")
    scheduler: str = _f("asha", choices=SCHEDULERS, doc="asha: stop weak trials early, per "
                        "student arch x stem x input size; fifo: run every trial to the end")
    asha: AshaConfig = field(default_factory=AshaConfig)
    num_samples: int = _f(8, ge=1, doc="configs the sampler proposes (each run once per "
                          "seed); ignored by the grid sampler (the grid's size)")
    max_concurrent: int = _f(2, ge=1, doc="trials running at once")
    seeds: list = _f([0], doc="each config runs once per seed (integers >= 0); Optuna sees "
                     "the mean, the dashboard the 95 % CI")
    baseline: bool = _f(False, doc="per student arch x stem, also run the base config at "
                        "kd.alpha 0 (no KD) and its KD twin, never stopped early")
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    storage: str | None = _f(None, doc="local path or URI; default results/<name>")
    search_seed: int = _f(0, ge=0, doc="seed of the Optuna sampler (and of a grid's "
                          "order)")
    measure_after: bool = _f(True, doc="re-measure latency of each completed student, alone")
    checkpoint_every_s: float = _f(20.0, ge=0, doc="a trial writes its resume checkpoint once "
                                   "this long has passed (and at the fine-tune's start and its "
                                   "end); 0: every epoch. Each checkpoint costs a copy to the "
                                   "run folder and a forced experiment snapshot; a trial that "
                                   "is killed or moved redoes at most this much work")
    max_failures: int = _f(2, ge=0, doc="a failed trial (its node lost, or an error) restarts "
                           "from its last epoch checkpoint up to this many times; a "
                           "deterministic error so costs max_failures+1 attempts")
    optuna_storage: str | None = _f(None, doc="the Optuna study's RDB storage URL "
                                    "(sqlite:///path.db, postgresql://user@host/db); default: "
                                    "optuna.db (SQLite) in the run folder")
    log_to: list = _f([], doc="trackers each trial is also logged to: mlflow (its tracking URI "
                      "from MLFLOW_TRACKING_URI), wandb (Weights & Biases: WANDB_PROJECT, "
                      "default search.name; WANDB_MODE=offline for files only)")


@dataclass
class SweepConfig:
    base: TrialConfig
    search: SearchConfig
    space: dict[str, ParamSpec]
    # combinations of searched values that cannot run together, each as ({key: value}, why):
    # a feature kd.method with a teacher.ensemble, in a space that searches both. The sweep
    # skips them (kdtune.sweep.plan.skipped) and says so; every other combination runs.
    skip: list = field(default_factory=list)


# --- generic checking -----------------------------------------------------------------------


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in ("search.space", "search.objectives"):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _yaml_str(value) -> str:
    # As a YAML file spells it, so the allowed values can be pasted back into a config.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _fmt_choices(choices) -> str:
    return ", ".join(_yaml_str(c) for c in choices)


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false",
            list: "a list", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


_TYPE_OK = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    list: lambda v: isinstance(v, list),
    dict: lambda v: isinstance(v, dict),
}


def _is_choice(value, choices) -> bool:
    # `in` alone would accept 1 for True and 0 for False (they compare equal in Python).
    return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices)


def _check_value(key: str, value, tp, meta):
    types_ = [tp]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        types_ = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(types_) < len(typing.get_args(tp)):
            return None  # Optional[...]: null is allowed
    if len(types_) == 1 and dataclasses.is_dataclass(types_[0]):
        return build(types_[0], value, key)
    bases = [typing.get_origin(t) or t for t in types_]
    choices = meta.get("choices")
    if choices is not None and callable(choices):
        choices = choices()
    # A union such as `str | bool` takes a value of any of its types; the first that fits wins.
    base = next((b for b in bases if _TYPE_OK[b](value)), None)
    if base is None:
        if choices:
            raise KDTuneError(f"{key}: got {value!r}; allowed: {_fmt_choices(choices)}")
        raise KDTuneError(f"{key}: expected {' or '.join(map(_type_name, bases))}, "
                          f"got {value!r}")
    if choices is not None and not _is_choice(value, choices):
        raise KDTuneError(f"{key}: got {value!r}; allowed: {_fmt_choices(choices)}")
    if base in (int, float):
        tests = {"ge": float.__ge__, "gt": float.__gt__, "le": float.__le__, "lt": float.__lt__}
        for op, test in tests.items():
            if meta.get(op) is not None and not test(float(value), float(meta[op])):
                raise KDTuneError(f"{key}: got {value!r}; allowed: a value "
                                  + " and ".join(_bounds(meta)))
    return float(value) if base is float else value


def _bounds(meta) -> list[str]:
    syms = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return [f"{syms[op]} {meta[op]}" for op in syms if meta.get(op) is not None]


def build(cls, raw, prefix: str = ""):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and bad values by name."""
    where = prefix or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise KDTuneError(f"{where}: expected a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for k in raw:
        if k not in fields:
            raise KDTuneError(f"{prefix + '.' if prefix else ''}{k}: unknown key; allowed: "
                              + ", ".join(fields))
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _check_value(key, raw[name], hints[name], f.metadata)
    return cls(**kwargs)


def set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise KDTuneError(f"{key}: cannot set inside {p!r}, which is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(pairs: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for pair in pairs or []:
        if "=" not in pair:
            raise KDTuneError(f"--set {pair!r}: expected key=value, e.g. kd.alpha=0.5")
        key, text = pair.split("=", 1)
        # YAML parsing gives numbers, booleans and null the same meaning as in the file.
        out.append((key.strip(), yaml.safe_load(text) if text.strip() else None))
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise KDTuneError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise KDTuneError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise KDTuneError(f"{path}: expected a mapping of sections at the top level")
    return raw


def _check_trial(cfg: TrialConfig) -> TrialConfig:
    d = cfg.data
    if d.dataset == "imagefolder" and not d.root:
        raise KDTuneError("data.root: required for data.dataset: imagefolder "
                          "(a folder or .tar.gz holding train/<class>/ and test/<class>/)")
    if cfg.prune.method == "channel" and cfg.prune.include_linear:
        raise KDTuneError("prune.include_linear: applies to prune.method: unstructured only; "
                          "channel pruning never cuts the output classifier")
    if cfg.train.schedule == "onecycle" and cfg.train.warmup_epochs:
        raise KDTuneError("train.warmup_epochs: applies to train.schedule: cosine only "
                          "(onecycle warms up by itself); drop it or use schedule: cosine")
    dev = cfg.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise KDTuneError(f"device: got {dev!r}; allowed: auto, cpu, cuda, cuda:N")
    for i, t in enumerate(cfg.teacher.members()):
        where = f"teacher.ensemble[{i}]" if cfg.teacher.ensemble else "teacher"
        if t.pretrained and t.arch not in ("resnet18", "resnet34", "resnet50",
                                           "mobilenet_v3_small"):
            raise KDTuneError(f"{where}.pretrained: imagenet weights exist only for resnet18, "
                              f"resnet34, resnet50, mobilenet_v3_small, not {t.arch}")
    return cfg


def _recipe(section, arch: str, epochs: int, schedule: str) -> dict:
    """The null recipe keys of `section` (train or one teacher) filled for `arch`'s family."""
    from .models import model_family

    r = RECIPES[model_family(arch)]
    share, most = r["warmup"]
    warmup = 0.0 if schedule == "onecycle" else min(most, share * epochs)
    fill = {"optimizer": r["optimizer"], "lr": r["lr"], "weight_decay": r["weight_decay"],
            "warmup_epochs": round(warmup, 4), "cutout": r["cutout"]}
    return {k: v for k, v in fill.items() if getattr(section, k, 0) is None}


def resolve_recipe(cfg: TrialConfig) -> TrialConfig:
    """Fill the recipe keys left at null (RECIPES) from the student's and each teacher's
    architecture family. A sweep keeps its base unresolved, so each trial resolves them for the
    student.arch it runs."""
    t = cfg.train
    for k, v in _recipe(t, cfg.student.arch, t.epochs, t.schedule).items():
        setattr(t, k, v)
    if cfg.teacher.ensemble:
        members = []
        for m in cfg.teacher.members():
            members.append({k: getattr(m, k) for k in MEMBER_KEYS}
                           | _recipe(m, m.arch, m.epochs, "cosine"))
        cfg.teacher.ensemble = members
    for k, v in _recipe(cfg.teacher, cfg.teacher.arch, cfg.teacher.epochs, "cosine").items():
        setattr(cfg.teacher, k, v)
    return cfg


def _build_ensemble(members) -> list[dict] | None:
    """teacher.ensemble checked member by member (teacher keys, named by index); the members
    as written, since what they leave out comes from the teacher section."""
    if members is None:
        return None
    if not isinstance(members, list) or not members:
        raise KDTuneError(f"teacher.ensemble: expected a list of teachers, got {members!r}")
    out = []
    for i, m in enumerate(members):
        where = f"teacher.ensemble[{i}]"
        if isinstance(m, str):  # shorthand: just the arch
            m = {"arch": m}
        if not isinstance(m, dict):
            raise KDTuneError(f"{where}: expected a mapping with arch, e.g. "
                              "{arch: resnet20, stem: cifar}, or an arch name")
        for k in m:
            if k not in MEMBER_KEYS:
                raise KDTuneError(f"{where}.{k}: unknown key; allowed: {', '.join(MEMBER_KEYS)}")
        if "arch" not in m:
            raise KDTuneError(f"{where}.arch: required (which model this teacher is)")
        built = build(TeacherConfig, m, where)
        # the checked values (2 -> 2.0 for a float key), so equal members hash alike
        out.append({k: getattr(built, k) for k in m})
    return out


def _check_family(cfg: TrialConfig) -> None:
    """What a vision transformer cannot do: choose a stem, or be channel-pruned."""
    from .models import model_family

    # (key the stem came from, where the ViT sits, arch, stem); an ensemble member that does
    # not set its stem inherits teacher.stem: name the key that was written
    named = [("student.stem", "", cfg.student.arch, cfg.student.stem)]
    for i, m in enumerate(cfg.teacher.members()):
        member = f"teacher.ensemble[{i}]"
        if not cfg.teacher.ensemble:
            named.append(("teacher.stem", "", m.arch, m.stem))
        elif "stem" in cfg.teacher.ensemble[i]:
            named.append((f"{member}.stem", "", m.arch, m.stem))
        else:
            named.append(("teacher.stem", f" (inherited by {member})", m.arch, m.stem))
    for key, via, arch, stem in named:
        if model_family(arch) == "vit" and stem != "cifar":
            raise KDTuneError(f"{key}: {arch}{via} is a vision transformer and has no stem to "
                              f"choose (its patch-4 embedding is its 32 px design); drop {key}: "
                              f"{stem}" + (", or give each CNN member its own stem" if via
                                           else ""))
    if model_family(cfg.student.arch) == "vit" and cfg.prune.ratio > 0:
        if cfg.prune.method == "channel":
            raise KDTuneError(f"prune.method: channel cannot prune {cfg.student.arch}, a "
                              "vision transformer (its width is shared by every token and "
                              "residual; no channel to drop alone); use prune.method: "
                              "unstructured with prune.include_linear: true")
        if not cfg.prune.include_linear:
            raise KDTuneError(f"prune.include_linear: {cfg.student.arch} is a vision "
                              "transformer whose only conv is its patch embedding; pruning "
                              "it needs prune.include_linear: true (its blocks are Linear)")


def trial_config(raw: dict | None = None, overrides: list[tuple[str, Any]] | None = None,
                 resolve: bool = True) -> TrialConfig:
    """A checked TrialConfig; `resolve`: fill the recipe keys left at null (resolve_recipe)."""
    raw = dict(raw or {})
    raw.pop("search", None)
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy with plain types
    for key, value in overrides or []:
        set_dotted(raw, key, value)
    cfg = build(TrialConfig, raw)
    cfg.teacher.ensemble = _build_ensemble(cfg.teacher.ensemble)
    if cfg.teacher.ensemble and len(cfg.teacher.ensemble) == 1:
        # a list of one is that teacher alone, written into teacher.*: a sweep can search
        # single teachers and ensembles on one axis, and the result columns stay one teacher's
        member = cfg.teacher.members()[0]
        member.cache, member.ensemble = cfg.teacher.cache, None
        cfg.teacher = member
    _check_family(cfg)
    cfg = _check_trial(cfg)
    return resolve_recipe(cfg) if resolve else cfg


SEARCHED = object()  # check_kd_keys: a key the sweep searches (no single value)


def check_kd_keys(methods: set[str], given: dict[str, Any], where: str = "") -> None:
    """Refuse kd keys written for a method the config never runs. `methods`: every kd.method
    the config (or sweep) can run; `given`: the kd keys the user wrote -> value (SEARCHED: a
    searched key). In a sweep that searches kd.method they apply to the trials of their method
    and are inert in the others, as kd.temperature is at kd.alpha 0. A key at its default
    changes nothing and passes: a resolved config (a run's stored sweep.yaml, every key written
    out) reads back as it was written."""
    defaults = KDConfig()
    for key, value in given.items():
        if value is not SEARCHED and value == getattr(defaults, key, SEARCHED):
            continue
        applies = KD_METHOD_KEYS.get(key)
        if applies and not set(applies) & methods:
            raise KDTuneError(f"{where}kd.{key}: applies to kd.method: "
                              f"{', '.join(applies)} only; this config runs "
                              f"{', '.join(sorted(methods))}")
        if key == "alpha" and methods == {"dkd"} and value != 0:
            raise KDTuneError(f"{where}kd.alpha: not used by kd.method: dkd (its loss is CE + "
                              "warmup x (kd.dkd_alpha x TCKD + kd.dkd_beta x NCKD)); set "
                              "kd.dkd_alpha / kd.dkd_beta, or kd.alpha: 0 alone for the no-KD "
                              "baseline")


def ensemble_refusal(method: str, teacher: TeacherConfig) -> str | None:
    """Why `method` cannot distil from `teacher`'s ensemble (a feature method matches one
    teacher's features), or None. The one rule the config checks, a sweep's skipped pairs
    (kdtune.sweep.plan.skipped) and the Distiller apply."""
    if not (teacher.ensemble and method in FEATURE_METHODS):
        return None
    return (f"kd.method: {method} cannot distil from teacher.ensemble (it matches one "
            "teacher's features, and an ensemble has no single feature map); use kd.method: "
            "logit or dkd with an ensemble")


def check_teacher_cache(methods: set[str], teacher: TeacherConfig, alpha: float) -> None:
    """What a teacher section cannot serve. teacher.cache: views serves logit methods only (a
    sweep that searches kd.method over logit and feature methods uses it for its logit/dkd
    trials; a config whose every method needs features cannot use it at all) and no vision
    transformer (they run online, kdtune.teacher). An ensemble serves logit methods only: the
    feature methods match one teacher's feature maps or embedding (a sweep searching methods
    skips those pairs, see SweepConfig.skip; it fails only when no method is left)."""
    if alpha == 0:
        return
    from .models import model_family

    if teacher.cache == "views" and methods <= set(FEATURE_METHODS):
        method = " / ".join(sorted(methods))
        raise KDTuneError(f"teacher.cache: views cannot serve kd.method: {method} (it needs "
                          "the teacher's feature maps, which the view cache does not hold); "
                          "use teacher.cache: auto or none")
    vits = [m.arch for m in teacher.members() if model_family(m.arch) == "vit"]
    if teacher.cache == "views" and vits:
        raise KDTuneError(f"teacher.cache: views: {vits[0]} is a vision transformer, and ViT "
                          "teachers run online (their view cache would cost 162 forward "
                          "passes per image); use teacher.cache: auto or none")
    why = next(filter(None, (ensemble_refusal(m, teacher) for m in sorted(methods))), None)
    if why:
        raise KDTuneError(why)


def _given_kd(raw: dict, overrides) -> dict[str, Any]:
    given = dict((raw.get("kd") or {}) if isinstance(raw.get("kd"), dict) else {})
    for key, value in overrides or []:
        if key.startswith("kd."):
            given[key[3:]] = value
    return given


def load_trial_config(path: str | Path, overrides=None) -> TrialConfig:
    raw = read_yaml(path)
    if "search" in raw:
        raise KDTuneError(f"{path}: has a search: section; run it with `kdtune sweep {path}`")
    return checked_trial_config(raw, overrides)


def checked_trial_config(raw: dict, overrides=None) -> TrialConfig:
    """A trial's config with the checks a whole trial needs (KD keys its method reads, the
    teacher cache it can use), from a YAML file's content or a notebook's dict."""
    cfg = trial_config(raw, overrides)
    check_kd_keys({cfg.kd.method}, _given_kd(raw, overrides))
    check_teacher_cache({cfg.kd.method}, cfg.teacher, cfg.kd.alpha)
    if cfg.train.cutout and cfg.teacher.cache == "views" and cfg.kd.alpha > 0:
        raise KDTuneError(f"teacher.cache: views cannot serve train.cutout: {cfg.train.cutout} "
                          "(the cache holds the teacher's logits of un-erased views; "
                          f"{cfg.student.arch} trains on erased ones); use teacher.cache: auto "
                          "or none, or train.cutout: 0")
    return cfg


# --- sweeps ----------------------------------------------------------------------------------

# Keys that change the teacher. A sweep prepares each distinct teacher once, up front, so these
# may only take a finite set of values (choice/grid), never a continuous distribution.
TEACHER_KEYS = ("teacher.", "data.")
STEM_SHORTHAND = "stem"  # sets teacher.stem and student.stem alike


def _check_param(key: str, spec: ParamSpec, base: dict) -> None:
    where = f"search.space.{key}"
    if spec.type in ("uniform", "loguniform", "int"):
        if spec.low is None or spec.high is None:
            raise KDTuneError(f"{where}: type {spec.type} needs low and high")
        if spec.values is not None:
            raise KDTuneError(f"{where}: type {spec.type} takes low/high, not values")
        if not spec.low < spec.high:
            raise KDTuneError(f"{where}: low ({spec.low}) must be below high ({spec.high})")
        if spec.type == "loguniform" and spec.low <= 0:
            raise KDTuneError(f"{where}: loguniform needs low > 0, got {spec.low}")
        if spec.type == "loguniform" and spec.step is not None:
            raise KDTuneError(f"{where}: loguniform takes no step")
        if spec.type == "int" and spec.step is not None and not float(spec.step).is_integer():
            raise KDTuneError(f"{where}: type int needs an integer step, got {spec.step}")
        if spec.type == "int" and not (float(spec.low).is_integer()
                                       and float(spec.high).is_integer()):
            raise KDTuneError(f"{where}: type int needs integer low/high")
        if key.startswith(TEACHER_KEYS) and key != "teacher.cache":
            raise KDTuneError(f"{where}: teachers are prepared once per sweep, so {key} may "
                              "only take listed values (type choice or grid), not "
                              f"{'an' if spec.type == 'int' else 'a'} {spec.type} range")
        samples = (spec.low, spec.high)
    else:
        if not spec.values or not isinstance(spec.values, list):
            raise KDTuneError(f"{where}: type {spec.type} needs a non-empty list of values")
        if spec.low is not None or spec.high is not None or spec.step is not None:
            raise KDTuneError(f"{where}: type {spec.type} takes values, not low/high/step")
        samples = spec.values
    # Every value the searcher may pick must pass the same checks as a hand-written config.
    targets = ["teacher.stem", "student.stem"] if key == STEM_SHORTHAND else [key]
    for value in samples:
        for target in targets:
            trial = yaml.safe_load(yaml.safe_dump(base))
            v = int(value) if spec.type == "int" else value
            try:
                set_dotted(trial, target, v)
                trial_config(trial)
            except KDTuneError as e:
                msg = str(e)
                raise KDTuneError(f"{where}: value {value!r} is invalid: {msg}") from None


def _check_searched_stem(base: TrialConfig, space: dict[str, ParamSpec]) -> None:
    """A searched stem cannot include a vision transformer (it has none): refuse the sweep
    when any arch it can run on that side is one."""
    from .models import model_family

    def archs(key: str, fallback: list[str]) -> list[str]:
        return list(space[key].values or []) if key in space else fallback

    teachers = [m.arch for m in base.teacher.members()]
    if "teacher.ensemble" in space:
        teachers += [m["arch"] if isinstance(m, dict) else m
                     for e in space["teacher.ensemble"].values or [] if e for m in e]
    sides = {"student": archs("student.arch", [base.student.arch]),
             "teacher": archs("teacher.arch", teachers)}
    for key in (STEM_SHORTHAND, "student.stem", "teacher.stem"):
        if key not in space:
            continue
        for side, names in sides.items():
            if key != STEM_SHORTHAND and not key.startswith(side):
                continue
            vit = next((a for a in names if model_family(a) == "vit"), None)
            if vit:
                raise KDTuneError(f"search.space.{key}: {vit} ({side}) is a vision "
                                  "transformer and has no stem; search the stem in a sweep "
                                  "of CNNs only")


#: search.log_to: where else each trial is logged (kdtune.sweep.trackers)
LOG_TARGETS = ("mlflow", "wandb")
#: search.optuna_storage: the database URL schemes Optuna's RDBStorage (SQLAlchemy) opens
OPTUNA_STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql")


def check_optuna_storage(url: str | None) -> None:
    """A database URL SQLAlchemy can parse, of a kind Optuna stores studies in. Whether its
    driver is installed and the server answers is found out when the sweep opens it."""
    if url is None:
        return
    where = "search.optuna_storage"
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""
    if scheme not in OPTUNA_STORAGE_SCHEMES:
        raise KDTuneError(f"{where}: {redact_url(url)!r} is not a database URL; expected "
                          "sqlite:///path/to/optuna.db, postgresql://user@host/db or "
                          "mysql://user@host/db (or leave it unset: optuna.db in the run folder)")
    try:
        from sqlalchemy.engine import make_url

        make_url(url)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's ArgumentError, ValueError
        raise KDTuneError(f"{where}: cannot parse {redact_url(url)!r}: {e}") from None


def redact_url(url: str | None) -> str | None:
    """The URL with its password replaced by ***: what sweep.yaml and messages show."""
    if not url or "://" not in url or "@" not in url.split("://", 1)[1].split("/", 1)[0]:
        return url
    scheme, rest = url.split("://", 1)
    cred, host = rest.split("/", 1)[0].rsplit("@", 1)
    if ":" not in cred:
        return url
    path = rest[len(rest.split("/", 1)[0]):]
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}{path}"


def load_sweep_config(path: str | Path, overrides=None) -> SweepConfig:
    raw = read_yaml(path)
    if "search" not in raw:
        raise KDTuneError(f"{path}: no search: section; a single run is `kdtune trial {path}`")
    return sweep_config(raw, overrides, default_name=Path(path).stem)


def sweep_config(raw: dict, overrides=None, default_name: str = "sweep") -> SweepConfig:
    # The objectives' order is meaning (ASHA judges the first; Optuna's directions follow it),
    # and the plain-types copy below sorts keys: keep the order as written, or as overridden.
    objectives = (raw.get("search") or {}).get("objectives")
    order = list(objectives) if isinstance(objectives, dict) else []
    raw = yaml.safe_load(yaml.safe_dump(raw))
    search_raw = raw.pop("search") or {}
    for key, value in overrides or []:
        set_dotted(search_raw if key.startswith("search.") else raw,
                   key[len("search."):] if key.startswith("search.") else key, value)
        if key == "search.objectives" and isinstance(value, dict):
            order = list(value)
    # unresolved: each trial resolves the recipe keys for the student.arch it runs
    base = trial_config(raw, resolve=False)
    search = build(SearchConfig, search_raw, "search")
    if isinstance(search.objectives, dict) and set(order) == set(search.objectives):
        search.objectives = {k: search.objectives[k] for k in order}
    if search.name is None:
        search.name = default_name
    space: dict[str, ParamSpec] = {}
    allowed_keys = set(base.flat()) | {STEM_SHORTHAND}
    for key, spec_raw in search.space.items():
        if key not in allowed_keys:
            raise KDTuneError(f"search.space.{key}: unknown config key; allowed: dotted keys "
                              "such as kd.temperature, kd.alpha, prune.ratio, student.arch, "
                              "stem")
        if key.startswith("data."):
            raise KDTuneError(f"search.space.{key}: the data and its split are fixed for a "
                              "sweep (teachers and caches depend on them); set it in data:")
        if key == "seed":
            raise KDTuneError("search.space.seed: seeds are not searched; list them in "
                              "search.seeds")
        spec = build(ParamSpec, spec_raw, f"search.space.{key}")
        _check_param(key, spec, yaml.safe_load(yaml.safe_dump(base.to_dict())))
        space[key] = spec
    methods = set(space["kd.method"].values) if "kd.method" in space else {base.kd.method}
    check_kd_keys(methods, _given_kd(raw, None))
    check_kd_keys(methods, {k[3:]: SEARCHED for k in space if k.startswith("kd.")},
                  "search.space.")
    # a searched alpha, or baseline: true (its KD twins), has KD trials whatever the base says
    alpha = 1.0 if "kd.alpha" in space or search.baseline else base.kd.alpha
    _check_searched_stem(base, space)
    teacher_keys = [k for k in space if k.startswith("teacher.") and k != "teacher.cache"]
    skip, pairs = [], 0
    for combo in itertools.product(*[space[k].values or [] for k in teacher_keys]):
        teacher = trial_config(base.to_dict(), list(zip(teacher_keys, combo)),
                               resolve=False).teacher
        refused = set()
        if "kd.method" in space:
            # both searched: an ensemble x feature-method pair is skipped, the rest runs
            for m in sorted(methods):
                why = ensemble_refusal(m, teacher)
                if why:
                    refused.add(m)
                    skip.append(({**dict(zip(teacher_keys, combo)), "kd.method": m}, why))
        pairs += len(methods)
        if methods - refused:  # what no searched method fixes, e.g. views with a ViT teacher
            check_teacher_cache(methods - refused, teacher, alpha)
    if skip and len(skip) == pairs:
        raise KDTuneError(f"search.space: every pair skipped, nothing would run: {skip[0][1]}")
    if STEM_SHORTHAND in space and ("teacher.stem" in space or "student.stem" in space):
        raise KDTuneError("search.space.stem: sets teacher.stem and student.stem together; "
                          "drop the separate teacher.stem/student.stem entry")

    for metric, mode in search.objectives.items():
        if metric not in OBJECTIVE_METRICS:
            raise KDTuneError(f"search.objectives.{metric}: unknown objective; allowed: "
                              + ", ".join(OBJECTIVE_METRICS))
        if mode not in MODES:
            raise KDTuneError(f"search.objectives.{metric}: got {mode!r}; allowed: max, min")
    if not search.objectives:
        raise KDTuneError("search.objectives: needs at least one, e.g. {val_acc: max}")
    if not search.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                   for s in search.seeds):
        raise KDTuneError(f"search.seeds: expected a list of integers >= 0, got {search.seeds!r}")
    if len(set(search.seeds)) != len(search.seeds):
        raise KDTuneError(f"search.seeds: duplicates in {search.seeds}")
    grids = [k for k, s in space.items() if s.type == "grid"]
    check_optuna_storage(search.optuna_storage)
    if not all(isinstance(t, str) and t in LOG_TARGETS for t in search.log_to):
        bad = next(t for t in search.log_to if not (isinstance(t, str) and t in LOG_TARGETS))
        raise KDTuneError(f"search.log_to: unknown target {bad!r}; allowed: "
                          f"{_fmt_choices(LOG_TARGETS)}")
    if len(set(search.log_to)) != len(search.log_to):
        raise KDTuneError(f"search.log_to: duplicates in {search.log_to}")
    if search.storage and "://" in search.storage and \
            search.storage.split("://", 1)[0].lower() not in STORAGE_SCHEMES:
        raise KDTuneError(f"search.storage: {search.storage}: unknown URI scheme; allowed: "
                          f"{', '.join(s + '://' for s in STORAGE_SCHEMES)} or a path")
    if search.sampler == "grid":
        if len(grids) != len(space):
            bad = [k for k in space if k not in grids]
            raise KDTuneError(f"search.sampler: grid needs every space entry of type grid; "
                              f"not grid: {', '.join(bad)}")
    elif grids:
        raise KDTuneError(f"search.space.{grids[0]}: type grid needs search.sampler: grid")
    return SweepConfig(base=base, search=search, space=space, skip=skip)
