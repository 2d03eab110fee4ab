"""Channel pruning (Torch-Pruning) on every CNN of the registry, and reloading pruned students.

Checked against our torch first: the dependency graph must cut residual adds and MobileNetV3's
squeeze-excitation consistently, keep the classifier, never empty a layer, round widths, and
the narrower network must still run, on contiguous and channels_last weights alike.
"""

import pytest
import torch
from torch import nn

from kdtune.errors import KDTuneError
from kdtune.measure import count_flops
from kdtune.models import (architecture_signature, create_model, layer_widths, list_models,
                           load_student, model_family, rebuild_student, save_student)
from kdtune.prune import apply_pruning, conv_channels, make_permanent, output_layer, \
    prune_channels

# channel pruning is for CNNs; a ViT is refused at validation (tests/test_vit_ensemble.py)
CNNS = [m for m in list_models() if model_family(m) == "cnn"]


def _x(n=2, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g)


@pytest.mark.parametrize("stem", ["cifar", "standard"])
@pytest.mark.parametrize("name", CNNS)
def test_channel_pruning_narrows_every_registry_cnn_and_it_still_runs(name, stem):
    torch.manual_seed(0)
    model = create_model(name, 10, stem).eval()
    before = conv_channels(model)
    flops0 = count_flops(model)
    head = output_layer(model)
    head_shape = tuple(head.weight.shape)
    cut = prune_channels(model, 0.5, _x(1), "global", round_to=8)
    assert cut == pytest.approx(1 - conv_channels(model) / before)
    assert 0.3 < cut < 0.7  # the asked 0.5, give or take rounding to multiples of 8
    assert output_layer(model).weight.shape[0] == head_shape[0] == 10  # classes untouched
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels > 0 and m.weight.shape[0] == m.out_channels
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean.shape[0] == m.num_features > 0
    assert count_flops(model) < 0.8 * flops0  # narrower layers: real FLOPs saved
    assert model(_x()).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v3_small"])
def test_widths_are_multiples_of_round_to(name):
    model = create_model(name, 10, "cifar").eval()
    original = layer_widths(model)
    prune_channels(model, 0.3, _x(1), "layerwise", round_to=8)
    changed = {k: w for k, w in layer_widths(model).items() if w != original[k]}
    assert changed, "nothing was pruned"
    assert all(w % 8 == 0 for w in changed.values()), changed


def test_round_to_1_cuts_closer_to_the_ratio_than_round_to_8():
    exact, rounded = (create_model("resnet20", 10, "cifar").eval() for _ in range(2))
    cut1 = prune_channels(exact, 0.3, _x(1), "layerwise", round_to=1)
    cut8 = prune_channels(rounded, 0.3, _x(1), "layerwise", round_to=8)
    assert abs(cut1 - 0.3) < 0.03 < abs(cut8 - 0.3)


def test_global_scope_never_empties_a_layer_even_at_a_high_ratio():
    for name in ("resnet20", "cnn4", "mobilenet_v3_small"):
        model = create_model(name, 10, "cifar").eval()
        prune_channels(model, 0.95, _x(1), "global", round_to=8)
        assert min(layer_widths(model).values()) >= 1
        assert model(_x()).shape == (2, 10)


def test_layerwise_keeps_the_channels_of_largest_group_l1_norm():
    # cnn4's first conv is coupled to its batch norm and the next conv's input slices: a
    # channel's importance is the L1 norm over all three (Torch-Pruning's group importance)
    torch.manual_seed(0)
    model = create_model("cnn4", 10, "cifar").eval()
    conv, bn, nxt = model.features[0], model.features[1], model.features[4]
    nn.init.uniform_(bn.weight, 0.5, 1.5)  # distinct |gamma|s so they matter for the order
    w = conv.weight.detach()
    score = (w.abs().sum(dim=(1, 2, 3)) + bn.weight.detach().abs()
             + nxt.weight.detach().abs().sum(dim=(0, 2, 3)))
    keep_expected = set(score.argsort(descending=True)[:16].tolist())
    prune_channels(model, 0.5, _x(1), "layerwise", round_to=8)
    assert model.features[0].out_channels == 16
    kept = {int((w == k).all(dim=(1, 2, 3)).nonzero()[0]) for k in
            model.features[0].weight.detach()}
    assert kept == keep_expected


def test_pruning_leaves_batchnorm_statistics_and_training_mode_alone():
    model = create_model("resnet20", 10, "cifar").train()
    mean0 = model.stem[1].running_mean.clone()
    prune_channels(model, 0.25, _x(1) * 5, "global")
    assert model.training
    # the surviving channels' statistics are the untouched originals (zeros at init)
    assert torch.equal(model.stem[1].running_mean, mean0[: model.stem[1].num_features])


def test_channels_last_weights_prune_and_reload():
    model = create_model("mobilenet_v3_small", 10, "cifar").eval()
    model = model.to(memory_format=torch.channels_last)
    prune_channels(model, 0.4, _x(1).contiguous(memory_format=torch.channels_last), "global")
    model = model.to(memory_format=torch.channels_last)
    out = model(_x().contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", CNNS)
def test_load_student_rebuilds_a_channel_pruned_student_exactly(name, tmp_path):
    torch.manual_seed(1)
    model = create_model(name, 10, "cifar").eval()
    prune_channels(model, 0.4, _x(1), "global")
    save_student(model, tmp_path / "s.pt", name, "cifar")
    # weights_only: nothing pickled, nothing that can run code on load
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    assert saved["arch"] == name and saved["widths"] == layer_widths(model)
    loaded = load_student(tmp_path / "s.pt")
    assert not loaded.training
    assert layer_widths(loaded) == layer_widths(model)
    with torch.no_grad():
        assert torch.equal(loaded(_x()), model(_x()))
    assert architecture_signature(loaded, name, "cifar", 32) == \
        architecture_signature(model, name, "cifar", 32)


def test_depthwise_convs_keep_groups_equal_to_channels():
    model = create_model("mobilenet_v3_small", 10, "cifar").eval()
    prune_channels(model, 0.5, _x(1), "global")
    rebuilt = rebuild_student("mobilenet_v3_small", "cifar", model.state_dict())
    for (_, a), (_, b) in zip(model.named_modules(), rebuilt.named_modules()):
        if isinstance(a, nn.Conv2d):
            assert (a.in_channels, a.out_channels, a.groups) == \
                (b.in_channels, b.out_channels, b.groups)
            if a.groups > 1:
                assert a.groups == a.in_channels == a.out_channels


def test_rebuild_loads_unstructured_masks_mid_fine_tune():
    model = create_model("resnet8", 10, "cifar")
    apply_pruning(model, 0.5)
    state = model.state_dict()
    assert any(k.endswith("weight_mask") for k in state)
    rebuilt = rebuild_student("resnet8", "cifar", state).eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(_x()), model(_x()))
    make_permanent(model)
    assert architecture_signature(model, "resnet8", "cifar", 32) == architecture_signature(
        create_model("resnet8", 10, "cifar"), "resnet8", "cifar", 32)  # dense kernels alike


def test_load_student_reads_old_plain_state_dicts_given_arch_and_stem(tmp_path):
    model = create_model("resnet8", 10, "standard").eval()
    torch.save(model.state_dict(), tmp_path / "old.pt")
    with pytest.raises(KDTuneError, match="arch and stem"):
        load_student(tmp_path / "old.pt")
    loaded = load_student(tmp_path / "old.pt", arch="resnet8", stem="standard")
    with torch.no_grad():
        assert torch.equal(loaded(_x()), model(_x()))


def test_load_student_names_an_unreadable_file(tmp_path):
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(KDTuneError, match="bad.pt"):
        load_student(tmp_path / "bad.pt")
