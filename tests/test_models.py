import os
from urllib.error import URLError

import pytest
import torch
from torch import nn

from kdtune.errors import KDTuneError
from kdtune.models import STEMS, create_model, list_models, register_model

ALL = ["cnn4", "mobilenet_v3_small", "resnet18", "resnet20", "resnet32", "resnet34", "resnet50",
       "resnet56", "resnet8"]  # the CNNs: every one in both stems
VITS = ["vit_tiny", "vit_tiny_d6"]
# 224x224 forwards are the slow part on 2 CPU cores; the big teachers are covered at 32x32.
AT_224 = ["cnn4", "mobilenet_v3_small", "resnet8", "resnet20", "resnet18"]


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_registry_lists_every_model_sorted():
    assert list_models() == sorted(ALL + VITS)


def test_unknown_name_lists_valid_names():
    with pytest.raises(KDTuneError, match="resnet20") as err:
        create_model("resnet21")
    assert "'resnet21'" in str(err.value)
    assert all(name in str(err.value) for name in ALL)


def test_unknown_stem_lists_stems():
    with pytest.raises(KDTuneError, match="standard, cifar"):
        create_model("cnn4", stem="imagenet")


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError, match="cnn4"):
        register_model("cnn4")(lambda num_classes, stem, state: nn.Identity())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("stem", STEMS)
def test_shapes_at_32(name, stem):
    model = create_model(name, num_classes=7, stem=stem).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", AT_224)
def test_shapes_at_224(name):
    model = create_model(name, num_classes=10, stem="standard").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)


@pytest.mark.parametrize("name", ["cnn4", "resnet20", "mobilenet_v3_small", "resnet18"])
def test_channels_last_and_bf16_autocast_on_cpu(name):
    model = create_model(name).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.shape == (2, 10) and out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    # bf16 keeps ~3 significant digits: the logits stay close to the fp32 ones
    assert (out.float() - ref).abs().max() <= 0.1 * ref.abs().max() + 1e-2


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_resnet_stems(name):
    std, cifar = create_model(name, stem="standard"), create_model(name, stem="cifar")
    assert (std.conv1.kernel_size, std.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(std.maxpool, nn.MaxPool2d)
    c = cifar.conv1
    assert (c.kernel_size, c.stride, c.padding, c.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert c.out_channels == std.conv1.out_channels
    assert isinstance(cifar.maxpool, nn.Identity)


def test_mobilenet_cifar_stem_has_stride_1():
    assert first_conv(create_model("mobilenet_v3_small", stem="standard")).stride == (2, 2)
    assert first_conv(create_model("mobilenet_v3_small", stem="cifar")).stride == (1, 1)


@pytest.mark.parametrize("name", ["cnn4", "resnet8", "resnet20"])
def test_small_model_stems_differ(name):
    std, cifar = first_conv(create_model(name, stem="standard")), first_conv(create_model(name))
    assert (std.kernel_size, std.stride) == ((7, 7), (2, 2))
    assert (cifar.kernel_size, cifar.stride) == ((3, 3), (1, 1))


def test_standard_stem_shrinks_32px_input_to_8px_before_stage_1():
    seen = {}
    model = create_model("resnet20", stem="standard").eval()
    model.layers.register_forward_pre_hook(lambda m, args: seen.update(shape=args[0].shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen["shape"][-2:] == (8, 8)


@pytest.mark.parametrize("depth", [8, 20, 32, 56])
def test_cifar_resnet_depth(depth):
    model = create_model(f"resnet{depth}")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    # depth counts the 3x3 convs plus the final linear layer; projections are 1x1 and extra.
    assert len(convs) + 1 == depth
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == 2


def test_cifar_resnet20_param_count_matches_paper_plus_projections():
    # He et al. report 0.27M for ResNet-20; the two 1x1 projection shortcuts add 2,752.
    n = sum(p.numel() for p in create_model("resnet20").parameters())
    assert n == 272_474


@pytest.mark.parametrize("stem", STEMS)
def test_cnn4_param_budget(stem):
    n = sum(p.numel() for p in create_model("cnn4", num_classes=10, stem=stem).parameters())
    assert 80_000 <= n <= 130_000


def test_pretrained_rejected_for_models_without_imagenet_weights():
    with pytest.raises(KDTuneError, match="resnet18, resnet34, resnet50"):
        create_model("resnet20", pretrained="imagenet")
    with pytest.raises(KDTuneError, match="'cifar10'"):
        create_model("resnet18", pretrained="cifar10")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache and a download that fails like a machine without network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path


def test_pretrained_offline_gives_actionable_error(offline_hub):
    with pytest.raises(KDTuneError) as err:
        create_model("resnet18", pretrained="imagenet")
    msg = str(err.value)
    assert "could not be downloaded" in msg
    assert os.path.join(str(offline_hub), "checkpoints", "resnet18-f37072fd.pth") in msg
    assert "pretrained: null" in msg


def test_pretrained_loads_file_placed_in_hub_cache(offline_hub):
    # The offline error tells users to drop the .pth into the cache; check that advice works.
    import torchvision

    reference = torchvision.models.mobilenet_v3_small(num_classes=1000)
    (offline_hub / "checkpoints").mkdir()
    torch.save(reference.state_dict(), offline_hub / "checkpoints" / "mobilenet_v3_small-047dcff4.pth")
    model = create_model("mobilenet_v3_small", num_classes=10, stem="cifar", pretrained="imagenet")
    assert model.classifier[-1].out_features == 10
    assert torch.equal(model.features[1].block[0][0].weight, reference.features[1].block[0][0].weight)
    # The cifar stem only changes the stride, so even the first conv keeps its ImageNet kernel.
    assert torch.equal(first_conv(model).weight, first_conv(reference).weight)
    assert first_conv(model).stride == (1, 1)
