"""What a student step minimises, per `kd.method`, and which teacher it needs.

    logit      CE' + alpha * T^2 * KL                         (today's loss, kdtune.losses.kd_loss)
    fitnets    logit + feature_weight * MSE(R(f_s), f_t)      (Romero et al. 2015, hint stage)
    attention  logit + feature_weight * sum_j AT(f_s_j, f_t_j) (Zagoruyko & Komodakis 2017)
    dkd        CE' + min(epoch / warmup, 1) * (dkd_alpha * TCKD + dkd_beta * NCKD)
                                                              (Zhao et al. 2022)
    cosine     logit + feature_weight * mean(1 - cos(P(h_s), h_t)) (PyTorch KD tutorial)

CE' is cross-entropy with kd.label_smoothing; "logit" is the first line with kd.alpha. kd.alpha
= 0 turns distillation off for every method: plain CE', no teacher at all (the no-KD baseline).

Which teacher: logit and dkd read only the teacher's logits, which the view cache
(kdtune.teacher) holds for every crop/flip view, so they never run the teacher. fitnets,
attention and cosine need the teacher's feature maps or embedding; caching those would cost 162 views x 45k images x
(512 x 4 x 4 fp16 for resnet18's last stage alone) = 120 GB, so the teacher runs online, under
no_grad, on exactly the batch the student sees. The choice is made per trial
(`teacher_mode`), so one sweep mixes both.

FitNets here is the single-stage variant (hint loss trained with the student, as mdistiller
does), not the paper's two-stage hint-then-KD schedule: the regressor R (1x1 conv + BN, student
channels -> teacher channels) is trained with the student by the same optimizer. It lives
beside the student, never inside it: pruning never sees it, and size and FLOPs never count
it. Channel pruning narrows the student's last stage, so R is rebuilt for the new width when
the fine-tune starts, keeping the input columns of the channels that survived (found by matching
the last stage's norm statistics before and after, which pruning only slices; the classifier
would not do: MobileNetV3's hidden classifier layer is cut too): a freshly initialised R
made the hint loss jump from 31 to 120 on the first fine-tune epoch of a cnn4 test trial.

Feature maps come from forward hooks on the registry's stage modules
(kdtune.models.feature_stages). Attention pairs the deepest k stages of each network in order
(k = the smaller stage count) and drops pairs where either map is 1x1: its normalised
attention map is the constant 1 and carries no gradient. With the ImageNet stem on 32 px
images every stage of resnet18 can end up there; `check_method` refuses such a pair before
anything trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import FEATURE_METHODS, STAGE_METHODS, KDConfig, TrialConfig, ensemble_refusal
from .errors import KDTuneError
from .losses import at_loss, cosine_loss, dkd_loss, ensemble_logits, kd_loss, resize_map
from .models import create_model, feature_stages
from .prune import output_layer
from .teacher import has_vit


def teacher_mode(cfg: TrialConfig, sweep_mode: str) -> str:
    """How this trial gets its teacher: "views" (the view cache), "none" (the teacher model
    online; for alpha 0, no teacher at all). `sweep_mode` is what the run chose for logit
    methods (kdtune.trial.resolve_cache_mode); feature methods, vision-transformer teachers
    (kdtune.teacher) and students trained with Cutout (train.cutout) always run it online."""
    # Cutout: the cached logits are of un-erased views
    if cfg.kd.alpha == 0 or cfg.kd.method in FEATURE_METHODS or has_vit(cfg) or cfg.train.cutout:
        return "none"
    return sweep_mode


class FeatureTap:
    """Keeps the last output of each named module (forward hooks), for one network; with
    `inputs`, the first input instead (a forward pre-hook: the classifier's input).

    `training_only`: record only forwards in training mode (the student's steps, not its
    validation passes, whose 1024-image maps would otherwise stay alive until the next step).
    `take()` hands the maps over and forgets them, so none outlives the step that used it."""

    def __init__(self, model: nn.Module, names: list[str], training_only: bool = False,
                 inputs: bool = False):
        modules = dict(model.named_modules())
        self.names = names
        self.training_only = training_only
        self.out: dict[str, torch.Tensor] = {}
        self._hooks = [modules[n].register_forward_pre_hook(self._keep_input(n)) if inputs
                       else modules[n].register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def hook(module, inputs, output):
            if module.training or not self.training_only:
                self.out[name] = output
        return hook

    def _keep_input(self, name: str):
        def hook(module, inputs):
            if module.training or not self.training_only:
                self.out[name] = inputs[0]
        return hook

    def features(self) -> list[torch.Tensor]:
        return [self.out[n] for n in self.names]

    def take(self) -> list[torch.Tensor]:
        out = self.features()
        self.out = {}
        return out

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks, self.out = [], {}


def stage_shapes(model: nn.Module, names: list[str], input_size: int,
                 device: torch.device | str = "cpu", *, bf16: bool = False,
                 channels_last: bool = False) -> list[tuple[int, int, int]]:
    """(channels, height, width) of each named stage for one input_size image, found by one
    eval-mode forward (batch norm in train mode refuses a batch of one 1x1 map), in the
    trial's precision and layout like every other forward of the model."""
    tap = FeatureTap(model, names)
    was_training = model.training
    try:
        model.eval()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = torch.zeros(1, 3, input_size, input_size, device=device).to(memory_format=fmt)
        with torch.no_grad(), torch.autocast(torch.device(device).type, torch.bfloat16,
                                             enabled=bf16):
            model(x)
        return [tuple(f.shape[1:]) for f in tap.features()]
    finally:
        tap.close()
        model.train(was_training)


def attention_pairs(s_shapes, t_shapes) -> list[tuple[int, int]]:
    """(student stage, teacher stage) index pairs: the deepest k of each, in order, minus the
    pairs where either map is 1x1."""
    k = min(len(s_shapes), len(t_shapes))
    pairs = list(zip(range(len(s_shapes) - k, len(s_shapes)),
                     range(len(t_shapes) - k, len(t_shapes))))
    return [(i, j) for i, j in pairs if s_shapes[i][1:] != (1, 1) and t_shapes[j][1:] != (1, 1)]


def _names(cfg: TrialConfig) -> str:
    return (f"student {cfg.student.arch}/{cfg.student.stem} <- teacher "
            f"{cfg.teacher.name()}")


def check_method(cfg: TrialConfig, input_size: int | None = None) -> None:
    """Refuse a kd.method x architecture pair that cannot work, before anything trains: a
    feature method on a model without registered stages, or attention transfer where every
    stage pair ends at 1x1. Builds both networks on the CPU (untrained) to read their shapes."""
    if cfg.kd.alpha == 0 or cfg.kd.method not in STAGE_METHODS:
        return
    size = input_size or cfg.data.resize or 32
    shapes = []
    for arch, stem in ((cfg.student.arch, cfg.student.stem), (cfg.teacher.arch, cfg.teacher.stem)):
        model = create_model(arch, num_classes=10, stem=stem)
        try:
            names = feature_stages(arch, model)
        except KDTuneError as e:
            raise KDTuneError(f"kd.method: {cfg.kd.method} cannot work for {_names(cfg)}: "
                              f"{e}") from None
        try:
            shapes.append(stage_shapes(model, names, size))
        except RuntimeError as e:  # e.g. a pooling layer left with a 0x0 map
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise KDTuneError(f"{arch}/{stem} cannot run on {size} px images ({first}); use "
                              "a larger data.resize or stem: cifar") from None
    if cfg.kd.method == "attention" and not attention_pairs(*shapes):
        raise KDTuneError(
            f"kd.method: attention cannot work for {_names(cfg)} at {size} px: every paired "
            f"stage ends at 1x1 (student {[s[1:] for s in shapes[0]]}, teacher "
            f"{[s[1:] for s in shapes[1]]}), where an attention map is a constant with no "
            "gradient; use stem: cifar, data.resize, or kd.method: fitnets/logit/dkd")


def _channel_stats(model: nn.Module, stage: str) -> torch.Tensor:
    """(channels, 4): weight, bias, running mean and variance of the last BatchNorm2d up to
    and including the module `stage`, i.e. the norm that sets that stage's output channels (a
    CIFAR ResNet block's bn2 or its shortcut's, MobileNetV3's last 576-channel conv, cnn4's
    norm before its last ReLU). Channel pruning slices these per channel, never changes them."""
    last, inside = None, False
    for name, m in model.named_modules():  # pre-order: the stage, then its subtree
        in_stage = name == stage or name.startswith(stage + ".")
        if inside and not in_stage:
            break
        inside = inside or in_stage
        if isinstance(m, nn.BatchNorm2d):
            last = m
    if last is None:
        raise KDTuneError(f"no BatchNorm2d up to {stage}")
    return torch.stack([last.weight, last.bias, last.running_mean, last.running_var], 1)


def _kept_channels(before: torch.Tensor | None, after: torch.Tensor) -> torch.Tensor | None:
    """Index in `before` of each row of `after` (pruning keeps a channel's statistics exactly);
    None if some row has no unique match (e.g. an untrained network: every BN at 1, 0, 0, 1)."""
    if before is None:
        return None
    eq = (after[:, None, :].to(before.device) == before[None, :, :]).all(-1)  # (after, before)
    if not bool((eq.sum(1) == 1).all()):
        return None
    return eq.float().argmax(1)


def _kept_columns(before: torch.Tensor | None, after: torch.Tensor) -> torch.Tensor | None:
    """Index in `before` of each column of `after` (the classifier: pruning slices its input
    columns and never its outputs); None if some column has no unique match."""
    if before is None or before.shape[0] != after.shape[0]:
        return None
    return _kept_channels(before.T, after.T)


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def make_regressor(c_student: int, c_teacher: int) -> nn.Module:
    """FitNets' regressor: 1x1 conv + BN, student channels -> teacher channels."""
    conv = nn.Conv2d(c_student, c_teacher, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(c_teacher))


class Distiller:
    """The loss of one trial: `loss(logits, idx, x, y, view)` for kdtune.train.train_epoch.

    `teacher` is kdtune.teacher.Teacher or None (alpha 0); `mode` is teacher_mode's answer.
    Set `epoch` before each epoch (DKD's warmup reads it). `extra_modules()` are trained with
    the student (FitNets' regressor): the optimizer takes their parameters, the checkpoint
    their state (`state_dict`), and `attach(student)` must be called again for a rebuilt or
    pruned student.
    """

    def __init__(self, cfg: TrialConfig, teacher, mode: str, device: torch.device, *,
                 bf16: bool, input_size: int, channels_last: bool, log=print):
        self.kd: KDConfig = cfg.kd
        self.arch, self.t_arch = cfg.student.arch, cfg.teacher.arch
        self.teacher, self.mode, self.device = teacher, mode, device
        self.bf16, self.input_size, self.channels_last = bf16, input_size, channels_last
        self.log = log
        self.method = cfg.kd.method if cfg.kd.alpha > 0 else "none"
        if ensemble_refusal(self.method, cfg.teacher):  # config checks refuse it first
            raise KDTuneError(ensemble_refusal(self.method, cfg.teacher))
        on = self.method != "none"  # a no-KD run has neither weight
        self.feature_weight = cfg.kd.resolved_feature_weight() if on else None
        self.dkd_warmup = cfg.kd.resolved_dkd_warmup(cfg.train.epochs) if on else None
        self.epoch = 1
        self.regressor: nn.Module | None = None
        self._stats_before: torch.Tensor | None = None
        # cosine: student width -> teacher width; None while they are equal (the identity)
        self.projection: nn.Linear | None = None
        self._classifier_before: torch.Tensor | None = None
        self.pairs: list[tuple[int, int]] = []
        self._s_tap = self._t_tap = None
        if self.method == "cosine":
            head = output_layer(teacher.model)
            self._t_width = head.in_features
            self._t_tap = FeatureTap(teacher.model, [_name_of(teacher.model, head)], inputs=True)
        elif self.method in STAGE_METHODS:
            t_names = feature_stages(self.t_arch, teacher.model)
            self._t_shapes = stage_shapes(teacher.model, t_names, input_size, device, bf16=bf16,
                                          channels_last=channels_last)
            self._t_tap = FeatureTap(teacher.model, t_names)

    # --- the student side: (re)attached whenever the student module changes ----------------

    def attach(self, student: nn.Module) -> None:
        if self.method not in FEATURE_METHODS:
            return
        if self._s_tap is not None:
            self._s_tap.close()
        if self.method == "cosine":
            self._attach_cosine(student)
            return
        names = feature_stages(self.arch, student)
        s_shapes = stage_shapes(student, names, self.input_size, self.device, bf16=self.bf16,
                                channels_last=self.channels_last)
        self._s_tap = FeatureTap(student, names, training_only=True)
        if self.method == "attention":
            self.pairs = attention_pairs(s_shapes, self._t_shapes)
            if not self.pairs:
                raise KDTuneError("kd.method: attention: no stage pair with a spatial map "
                                  "(see kdtune.distill.check_method)")
        else:
            c_s, c_t = s_shapes[-1][0], self._t_shapes[-1][0]
            if self.regressor is None or self.regressor[0].in_channels != c_s:
                old, self.regressor = self.regressor, make_regressor(c_s, c_t)
                kept = None if old is None else _kept_channels(
                    self._stats_before, _channel_stats(student, names[-1]).detach())
                if kept is not None and len(kept) == c_s:
                    with torch.no_grad():
                        self.regressor[0].weight.copy_(old[0].weight[:, kept.to(
                            old[0].weight.device)])
                    self.regressor[1].load_state_dict(old[1].state_dict())
                elif old is not None:
                    self.log(f"fitnets: the surviving channels of {names[-1]} could not be "
                             "matched; the regressor starts afresh for the fine-tune")
                fmt = torch.channels_last if self.channels_last else torch.contiguous_format
                self.regressor = self.regressor.to(self.device, memory_format=fmt)

    def _attach_cosine(self, student: nn.Module) -> None:
        """The student's embedding (its classifier's input) and the projection to the teacher's
        width. Channel pruning narrows the embedding of a CIFAR ResNet (and MobileNetV3's
        hidden layer): the projection keeps the columns of the surviving features, the identity
        becoming its kept columns when the widths were equal."""
        head = output_layer(student)
        self._s_tap = FeatureTap(student, [_name_of(student, head)], training_only=True,
                                 inputs=True)
        d_s, d_t = head.in_features, self._t_width
        current = self.projection.in_features if self.projection is not None else d_t
        if d_s == current:
            return  # equal widths (the identity), or pruning left the embedding alone
        # widths differ: between the two networks (first attach), or pruning narrowed it
        old = self.projection.weight.detach() if self.projection is not None \
            else torch.eye(d_t, device=self.device)
        kept = _kept_columns(self._classifier_before, head.weight.detach())
        self.projection = nn.Linear(d_s, d_t, bias=False).to(self.device)
        if kept is not None and len(kept) == d_s:
            with torch.no_grad():
                self.projection.weight.copy_(old[:, kept.to(old.device)])
        elif self._classifier_before is not None:
            self.log("cosine: the surviving embedding features could not be matched; the "
                     "projection starts afresh for the fine-tune")

    def before_prune(self, student: nn.Module) -> None:
        """Call right before channel pruning: what the regressor's (or the projection's)
        rebuild matches against."""
        if self.method == "cosine":
            self._classifier_before = output_layer(student).weight.detach().clone()
        if self.regressor is not None:
            name = feature_stages(self.arch, student)[-1]
            self._stats_before = _channel_stats(student, name).detach().clone()

    def extra_modules(self) -> list[nn.Module]:
        return [m for m in (self.regressor, self.projection) if m is not None]

    def state_dict(self) -> dict:
        return {name: m.state_dict() for name, m in (("regressor", self.regressor),
                                                     ("projection", self.projection))
                if m is not None}

    def load_state_dict(self, state: dict) -> None:
        for name, m in (("regressor", self.regressor), ("projection", self.projection)):
            if m is not None and state.get(name) is not None:
                m.load_state_dict(state[name])

    def close(self) -> None:
        for tap in (self._s_tap, self._t_tap):
            if tap is not None:
                tap.close()

    # --- the loss ---------------------------------------------------------------------------

    def _teacher_logits(self, idx, x, view) -> torch.Tensor:
        if self.mode == "views":
            t = self.teacher.views[idx, view]
        else:
            with torch.no_grad(), torch.autocast(self.device.type, torch.bfloat16,
                                                 enabled=self.bf16):
                t = self.teacher.model(x)
        # an ensemble's (batch, members, classes): the logits of its mean T-softened probability
        return ensemble_logits(t, self.kd.temperature) if t.dim() == 3 else t

    def loss(self, logits, idx, x, y, view) -> torch.Tensor:
        kd = self.kd
        if self.method == "none":
            return kd_loss(logits, None, y, kd.temperature, 0.0, kd.label_smoothing)
        t_logits = self._teacher_logits(idx, x, view)
        if self.method == "dkd":
            ce = F.cross_entropy(logits.float(), y, label_smoothing=kd.label_smoothing)
            warm = min(self.epoch / self.dkd_warmup, 1.0) if self.dkd_warmup else 1.0
            return ce + warm * dkd_loss(logits, t_logits, y, kd.dkd_alpha, kd.dkd_beta,
                                        kd.temperature)
        base = kd_loss(logits, t_logits, y, kd.temperature, kd.alpha, kd.label_smoothing)
        if self.method == "logit":
            return base
        f_s, f_t = self._s_tap.take(), self._t_tap.take()
        if self.method == "cosine":
            h_s = f_s[0].float().flatten(1)
            h_s = self.projection(h_s) if self.projection is not None else h_s
            return base + self.feature_weight * cosine_loss(h_s, f_t[0].flatten(1))
        if self.method == "fitnets":
            hint = self.regressor(f_s[-1].float())
            target = f_t[-1].float()
            feat = F.mse_loss(resize_map(hint, target.shape[-2:]), target)
        else:
            feat = at_loss([f_s[i] for i, _ in self.pairs], [f_t[j] for _, j in self.pairs])
        return base + self.feature_weight * feat
