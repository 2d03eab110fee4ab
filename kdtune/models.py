"""Name-keyed model registry (timm-style): teachers, students and their stems.

Every model exists in two stems so the sweep can ablate the input stem:

* ``"standard"``: the ImageNet stem (large stride-2 conv, often + maxpool). On 32x32 CIFAR images it
  throws away 3/4 (or 15/16) of the spatial resolution before any real feature is learned, which
  is exactly the accuracy loss the ablation is meant to show.
* ``"cifar"``: a 3x3 stride-1 first conv and no maxpool, as in the CIFAR papers.

Only torchvision-backed models can start from ImageNet weights; the small CIFAR students have no
published ImageNet checkpoint, so asking for one is a user mistake.

Vision transformers (``family="vit"``) have no stem to choose: their patch-4 embedding on 32 px
is already the CIFAR adaptation (ViT-B/16's patch 16 is for 224 px), so they accept only the
default ``stem: cifar`` and config validation refuses ``standard`` or a searched stem.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable
from urllib.error import URLError

import torch
import torchvision.models as tvm
from torch import nn

from kdtune.errors import KDTuneError

STEMS = ("standard", "cifar")
PRETRAINED = (None, "imagenet")

# builder(num_classes, stem, imagenet_state) -> model; imagenet_state is the 1000-class
# state_dict when pretrained weights were requested, else None.
Builder = Callable[[int, str, "dict[str, Any] | None"], nn.Module]


# stages(model) -> names of the modules whose outputs are the model's stages, shallow to deep;
# the last is the feature map the classifier pools (what feature distillation reads).
Stages = Callable[[nn.Module], "list[str]"]


FAMILIES = ("cnn", "vit")


@dataclass(frozen=True)
class _Entry:
    build: Builder
    # A pinned enum member (not ``DEFAULT``) so results do not change when torchvision moves DEFAULT.
    imagenet_weights: tvm.WeightsEnum | None
    stages: Stages | None = None
    family: str = "cnn"


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, imagenet_weights: tvm.WeightsEnum | None = None,
                   stages: Stages | None = None, family: str = "cnn"):
    """Decorator adding ``builder(num_classes, stem, imagenet_state)`` under ``name``;
    ``stages(model)`` names its stage outputs for feature distillation (kd.method fitnets and
    attention), None where it has none; ``family`` (cnn, vit) picks its training recipe
    (config.RECIPES) and whether it has a stem."""

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        if family not in FAMILIES:
            raise ValueError(f"family {family!r}; allowed: {', '.join(FAMILIES)}")
        _REGISTRY[name] = _Entry(builder, imagenet_weights, stages, family)
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_family(name: str) -> str:
    """"cnn" or "vit" for a registry model (an unknown name is "cnn": create_model names it)."""
    entry = _REGISTRY.get(name)
    return entry.family if entry is not None else "cnn"


def feature_stages(name: str, model: nn.Module) -> list[str]:
    """Module names of ``model``'s (registry model ``name``) stage outputs, shallow to deep;
    the last is the feature map before global pooling. Pruning keeps module names, so the
    same names serve a pruned copy."""
    entry = _REGISTRY.get(name)
    if entry is None or entry.stages is None:
        have = [n for n in list_models() if _REGISTRY[n].stages is not None]
        raise KDTuneError(f"model {name!r} has no registered feature stages, so feature "
                          f"distillation cannot read it; models with stages: {', '.join(have)}")
    return entry.stages(model)


def create_model(
    name: str, num_classes: int = 10, stem: str = "cifar", pretrained: str | None = None
) -> nn.Module:
    """Build model ``name`` with a ``num_classes``-way head and the given stem.

    ``pretrained="imagenet"`` loads torchvision's ImageNet-1k weights (1000-class head), then swaps
    the classifier for a fresh ``num_classes`` one. With ``stem="cifar"`` the first conv is also
    replaced and therefore starts from scratch; every later layer keeps its ImageNet weights.
    """
    if name not in _REGISTRY:
        raise KDTuneError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    if stem not in STEMS:
        raise KDTuneError(f"unknown stem {stem!r}; valid stems: {', '.join(STEMS)}")
    if pretrained not in PRETRAINED:
        raise KDTuneError(f"unknown pretrained {pretrained!r}; valid values: null, 'imagenet'")
    entry = _REGISTRY[name]
    state = None
    if pretrained == "imagenet":
        if entry.imagenet_weights is None:
            have = [n for n in list_models() if _REGISTRY[n].imagenet_weights is not None]
            raise KDTuneError(
                f"model {name!r} has no ImageNet weights; pretrained: imagenet works only for "
                f"{', '.join(have)} (use pretrained: null)"
            )
        state = _fetch_imagenet_state(entry.imagenet_weights)
    return entry.build(num_classes, stem, state)


def _fetch_imagenet_state(weights: tvm.WeightsEnum) -> dict[str, Any]:
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (URLError, OSError, RuntimeError) as exc:  # URLError is an OSError; hash mismatch is RuntimeError
        where = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        raise KDTuneError(
            f"ImageNet weights {weights} could not be downloaded ({type(exc).__name__}: {exc}); "
            f"place the file from {weights.url} at {where} or use pretrained: null"
        ) from exc


def _kaiming_conv(conv: nn.Conv2d) -> nn.Conv2d:
    # Same init torchvision and He et al. use for convs followed by BN+ReLU.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


# --- torchvision teachers / students -----------------------------------------------------------


def _torchvision_resnet(ctor, num_classes: int, stem: str, state) -> nn.Module:
    model = ctor(weights=None, num_classes=1000 if state is not None else num_classes)
    if state is not None:
        model.load_state_dict(state)
        if num_classes != 1000:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
    if stem == "cifar":
        out = model.conv1.out_channels
        model.conv1 = _kaiming_conv(nn.Conv2d(3, out, kernel_size=3, stride=1, padding=1, bias=False))
        model.maxpool = nn.Identity()
    return model


@register_model("resnet18", imagenet_weights=tvm.ResNet18_Weights.IMAGENET1K_V1,
                stages=lambda m: ["layer1", "layer2", "layer3", "layer4"])
def _resnet18(num_classes, stem, state):
    return _torchvision_resnet(tvm.resnet18, num_classes, stem, state)


@register_model("resnet34", imagenet_weights=tvm.ResNet34_Weights.IMAGENET1K_V1,
                stages=lambda m: ["layer1", "layer2", "layer3", "layer4"])
def _resnet34(num_classes, stem, state):
    return _torchvision_resnet(tvm.resnet34, num_classes, stem, state)


# V1 rather than V2 for resnet50: resnet18/34 only have V1, and one recipe keeps teachers comparable.
@register_model("resnet50", imagenet_weights=tvm.ResNet50_Weights.IMAGENET1K_V1,
                stages=lambda m: ["layer1", "layer2", "layer3", "layer4"])
def _resnet50(num_classes, stem, state):
    return _torchvision_resnet(tvm.resnet50, num_classes, stem, state)


def _mobilenet_stages(model: nn.Module) -> list[str]:
    # torchvision's fixed MobileNetV3-Small layout: the last block at each resolution (features
    # 2, 4 and 9 start with stride 2), then the 576-channel 1x1 conv the classifier pools
    return ["features.1", "features.3", "features.8", f"features.{len(model.features) - 1}"]


@register_model("mobilenet_v3_small", imagenet_weights=tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
                stages=_mobilenet_stages)
def _mobilenet_v3_small(num_classes, stem, state):
    model = tvm.mobilenet_v3_small(weights=None, num_classes=1000 if state is not None else num_classes)
    if state is not None:
        model.load_state_dict(state)
        if num_classes != 1000:
            last = model.classifier[-1]
            model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    if stem == "cifar":
        # Keep the pretrained 3x3 kernel (same shape); only the stride changes, so with padding 1
        # the first feature map stays 32x32 instead of 16x16.
        model.features[0][0].stride = (1, 1)
    return model


# --- CIFAR ResNets (He et al. 2016, arXiv:1512.03385, section 4.2) -------------------------------


class _BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            # Projection shortcut (the paper's option B: 1x1 conv + BN) rather than the paper's CIFAR
            # choice, option A (zero-padded identity): it is a real conv, so the pruner and FLOP
            # counter see it like any other layer. It adds 2,752 params to each model.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _stem(out_ch: int, stem: str) -> nn.Sequential:
    if stem == "cifar":
        return nn.Sequential(
            nn.Conv2d(3, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
        )
    # ImageNet stem: /4 before the first stage, so a 32x32 image reaches stage 1 as 8x8.
    return nn.Sequential(
        nn.Conv2d(3, out_ch, 7, 2, 3, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    )


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            _kaiming_conv(m)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarResNet(nn.Module):
    """3 stages of 16/32/64 channels, n=(depth-2)/6 BasicBlocks each, stride 2 at stages 2 and 3."""

    def __init__(self, depth: int, num_classes: int = 10, stem: str = "cifar"):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = _stem(16, stem)
        layers, in_ch = [], 16
        for out_ch, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(in_ch, out_ch, stride if i == 0 else 1))
                in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def _cifar_resnet_stages(model: nn.Module) -> list[str]:
    n = len(model.layers) // 3  # the last block of each of the 3 stages
    return [f"layers.{n - 1}", f"layers.{2 * n - 1}", f"layers.{3 * n - 1}"]


def _register_cifar_resnet(depth: int) -> None:
    @register_model(f"resnet{depth}", stages=_cifar_resnet_stages)
    def _build(num_classes, stem, state):
        return CifarResNet(depth, num_classes, stem)


for _depth in (8, 20, 32, 56):
    _register_cifar_resnet(_depth)


# --- cnn4 -------------------------------------------------------------------------------------


class CNN4(nn.Module):
    """Four conv3x3-BN-ReLU blocks (32, 48, 64, 96 ch), 2x2 maxpool between blocks, avgpool, linear.

    Parameters for 10 classes: 99,082 with the cifar stem, 102,922 with the standard stem
    (its 7x7 first conv is 3,840 weights larger).
    """

    CHANNELS = (32, 48, 64, 96)

    def __init__(self, num_classes: int = 10, stem: str = "cifar"):
        super().__init__()
        blocks: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(self.CHANNELS):
            if i > 0:
                blocks.append(nn.MaxPool2d(2))
            if i == 0 and stem == "standard":
                blocks += [nn.Conv2d(in_ch, out_ch, 7, 2, 3, bias=False)]
            else:
                blocks += [nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)]
            blocks += [nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            if i == 0 and stem == "standard":
                blocks.append(nn.MaxPool2d(3, 2, 1))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _cnn4_stages(model: nn.Module) -> list[str]:
    return [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.ReLU)]


@register_model("cnn4", stages=_cnn4_stages)
def _cnn4(num_classes, stem, state):
    return CNN4(num_classes, stem)


# --- vision transformers (Dosovitskiy et al. 2021, arXiv:2010.11929) on 32 px -------------------


class _Attention(nn.Module):
    """Multi-head self-attention with plain Linear layers (not nn.MultiheadAttention, whose packed
    ``in_proj_weight`` is no Linear: unstructured pruning with include_linear, the FLOP counter
    and ONNX export all see these)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)) (GELU, 4x width)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT for 32 px: a patch-4 conv embedding (8x8 = 64 tokens + a class token), learned
    position embeddings, ``depth`` pre-norm blocks, a final LayerNorm and a linear head on the
    class token. ViT-Tiny's width 192 and 3 heads (DeiT, Touvron et al. 2021, arXiv:2012.12877).
    Other input sizes (data.resize) interpolate the position embeddings bicubically, as timm
    does when a ViT is fine-tuned at a new resolution."""

    def __init__(self, depth: int, width: int = 192, heads: int = 3, patch: int = 4,
                 image: int = 32, num_classes: int = 10):
        super().__init__()
        self.patch = patch
        self.grid = image // patch
        self.patch_embed = nn.Conv2d(3, width, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, width))
        self.blocks = nn.Sequential(*[_Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        # timm's ViT init: truncated normal 0.02 for embeddings and Linear weights, zero biases
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _pos(self, grid: int) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        c = patches.shape[-1]
        patches = patches.reshape(1, self.grid, self.grid, c).permute(0, 3, 1, 2)
        patches = nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic",
                                            align_corners=False)
        return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, c)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self._pos(grid)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# 12 blocks: ViT-Tiny (5.4 M parameters); 6 blocks: the half-depth student of the course labs
def _vit(name: str, depth: int, num_classes: int, stem: str) -> ViT:
    if stem != "cifar":
        raise KDTuneError(f"{name} is a vision transformer and has no stem to choose (its "
                          "patch-4 embedding is its 32 px design); use stem='cifar', the default")
    return ViT(depth=depth, num_classes=num_classes)


@register_model("vit_tiny", family="vit")
def _vit_tiny(num_classes, stem, state):
    return _vit("vit_tiny", 12, num_classes, stem)


@register_model("vit_tiny_d6", family="vit")
def _vit_tiny_d6(num_classes, stem, state):
    return _vit("vit_tiny_d6", 6, num_classes, stem)


# --- saving and reloading students, pruned or not ----------------------------------------------

STUDENT_FORMAT = "kdtune-student/1"


def save_student(model: nn.Module, path, arch: str, stem: str) -> None:
    """Weights plus what rebuilds them: arch, stem, class count, and every layer's width.

    Only tensors, strings and numbers, so :func:`load_student` reads it with
    ``torch.load(weights_only=True)``; nothing pickled can run code on load. Masks must be
    folded in first (``prune.make_permanent``) for a deployable file; a state with masks still
    reloads (see :func:`rebuild_student`).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": STUDENT_FORMAT, "arch": arch, "stem": stem,
                "num_classes": _num_classes(state), "widths": layer_widths(model),
                "state_dict": state}, path)


def load_student(path, arch: str | None = None, stem: str | None = None,
                 map_location="cpu") -> nn.Module:
    """The student saved at ``path`` as an ``nn.Module`` in eval mode, pruned or not.

    Channel-pruned students have narrower layers than ``create_model`` builds; the widths come
    from the saved tensors' shapes (see :func:`rebuild_student`), never from pickled modules.
    ``arch``/``stem`` are needed only for a plain ``state_dict`` file (kdtune before 0.2).
    """
    arch, stem, state = read_student(path, arch, stem, map_location)
    return rebuild_student(arch, stem, state).eval()


def read_student(path, arch: str | None = None, stem: str | None = None,
                 map_location="cpu") -> tuple[str, str, dict[str, torch.Tensor]]:
    """``(arch, stem, state_dict)`` of a saved student, without building it."""
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KDTuneError(f"{path}: cannot read a student checkpoint ({first})") from None
    if isinstance(saved, dict) and saved.get("format") == STUDENT_FORMAT:
        arch, stem, state = saved["arch"], saved["stem"], saved["state_dict"]
    elif arch is None or stem is None:
        raise KDTuneError(f"{path}: a plain state_dict without arch and stem; pass "
                          "load_student(path, arch=..., stem=...)")
    else:
        state = saved
    return arch, stem, state


def rebuild_student(arch: str, stem: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """``create_model(arch, stem=stem)`` resized to the widths in ``state``, with it loaded.

    Pruning only ever narrows Conv2d, BatchNorm2d and Linear layers, so each of those takes its
    sizes from its own tensors: a conv's out/in channels from its weight (a depthwise conv, whose
    groups equal its input channels, keeps groups = channels), a batch norm's features from its
    weight, a linear's features from its weight. A state saved mid-fine-tune of unstructured
    pruning (``weight_orig`` + ``weight_mask``) gets identity masks first, so the masks load too.
    A layer of any other kind whose shape differs fails in ``load_state_dict``, by name.
    """
    from torch.nn.utils import prune as torch_prune

    model = create_model(arch, num_classes=_num_classes(state), stem=stem)
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(prefix + "weight_orig", state.get(prefix + "weight"))
        if weight is None:
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            module.out_channels = weight.shape[0]
            module.groups = weight.shape[0] if depthwise else module.groups
            module.in_channels = weight.shape[1] * module.groups
        elif isinstance(module, nn.BatchNorm2d):
            module.num_features = weight.shape[0]
            for buf in ("running_mean", "running_var"):
                setattr(module, buf, torch.empty(weight.shape[0]))
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        else:
            continue
        module.weight = nn.Parameter(torch.empty(weight.shape))
        if getattr(module, "bias", None) is not None:
            module.bias = nn.Parameter(torch.empty(weight.shape[0]))
        if prefix + "weight_mask" in state:
            torch_prune.identity(module, "weight")
    model.load_state_dict(state)
    return model


def _num_classes(state: dict[str, torch.Tensor]) -> int:
    # the last weight of every registry model is its classifier's: (classes, features)
    key = next(k for k in reversed(state) if k.endswith("weight") or k.endswith("weight_orig"))
    return int(state[key].shape[0])


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv and linear layer: what channel pruning changed."""
    return {name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def architecture_signature(model: nn.Module, arch: str, stem: str, input_size: int) -> str:
    """Equal for students that deploy as the same network: arch, stem, input size and layer
    widths. Unstructured pruning leaves the widths alone, so it keeps the unpruned signature;
    such students share one latency measurement (their kernels are the same)."""
    import hashlib
    import json

    widths = hashlib.sha256(json.dumps(layer_widths(model)).encode()).hexdigest()[:10]
    return f"{arch}|{stem}|{input_size}px|w{widths}"
