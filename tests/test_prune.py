import io

import pytest
import torch
from torch import nn

from kdtune.errors import KDTuneError
from kdtune.models import create_model
from kdtune.prune import (
    apply_pruning,
    attach_identity_masks,
    make_permanent,
    prunable,
    sparsity,
)


def tiny(seed: int = 0) -> nn.Sequential:
    """Two convs and a linear whose weights have distinct magnitudes, so ranking is unambiguous."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    )
    weights = [m.weight for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    magnitudes = torch.randperm(total).float().add(1) / total  # distinct, none zero
    signs = torch.where(torch.rand(total) < 0.5, -1.0, 1.0)
    values = (magnitudes * signs).split([w.numel() for w in weights])
    with torch.no_grad():
        for w, v in zip(weights, values):
            w.copy_(v.view_as(w))
    return model


def conv_weights(model):
    return [m.weight for m, _ in prunable(model)]


def test_prunable_selects_conv_and_optionally_linear():
    model = tiny()
    assert [type(m) for m, _ in prunable(model)] == [nn.Conv2d, nn.Conv2d]
    assert [type(m) for m, _ in prunable(model, include_linear=True)] == [nn.Conv2d, nn.Conv2d, nn.Linear]
    assert all(name == "weight" for _, name in prunable(model, include_linear=True))


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.9])
def test_global_removes_exactly_the_smallest_magnitudes(ratio):
    model = tiny()
    before = torch.cat([w.detach().flatten().clone() for w in conv_weights(model)])
    k = round(ratio * before.numel())
    expected_zero = torch.zeros_like(before, dtype=torch.bool)
    expected_zero[before.abs().argsort()[:k]] = True

    apply_pruning(model, ratio, scope="global")
    after = torch.cat([w.detach().flatten() for w in conv_weights(model)])
    assert torch.equal(after == 0, expected_zero)
    assert torch.equal(after[~expected_zero], before[~expected_zero])
    assert model[-1].weight.eq(0).sum() == 0  # the linear layer was not in scope


def test_layerwise_prunes_every_tensor_by_ratio():
    model = tiny()
    apply_pruning(model, 0.5, scope="layerwise", include_linear=True)
    for m, _ in prunable(model, include_linear=True):
        assert (m.weight == 0).sum().item() == round(0.5 * m.weight.numel())


@pytest.mark.parametrize("ratio", [0.25, 0.6])
def test_layerwise_removes_smallest_magnitudes_per_tensor(ratio):
    model = tiny()
    before = [w.detach().flatten().clone() for w in conv_weights(model)]
    apply_pruning(model, ratio, scope="layerwise")
    for b, w in zip(before, conv_weights(model)):
        k = round(ratio * b.numel())
        expected_zero = torch.zeros_like(b, dtype=torch.bool)
        expected_zero[b.abs().argsort()[:k]] = True
        assert torch.equal(w.detach().flatten() == 0, expected_zero)


def test_ratio_zero_is_a_noop():
    model = tiny()
    keys = set(model.state_dict())
    assert apply_pruning(model, 0.0) == []
    assert set(model.state_dict()) == keys
    assert sparsity(model)["sparsity_pruned"] == 0.0


def test_unknown_scope_lists_scopes():
    with pytest.raises(KDTuneError, match="global, layerwise"):
        apply_pruning(tiny(), 0.5, scope="channel")


def test_pruned_weights_stay_zero_during_fine_tuning():
    model = tiny()
    apply_pruning(model, 0.5, include_linear=True)
    masks = [m.weight_mask.clone() for m, _ in prunable(model, include_linear=True)]
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(4, 3, 8, 8)).square().mean().backward()
        opt.step()
    for (m, _), mask in zip(prunable(model, include_linear=True), masks):
        assert (m.weight_orig != 0).all()  # the optimizer really did move everything underneath
        assert torch.equal(m.weight[mask == 0], torch.zeros(int((mask == 0).sum())))
        assert (m.weight[mask == 1] != 0).all()
    assert sparsity(model, include_linear=True)["sparsity_pruned"] == pytest.approx(0.5, abs=0.01)


def save_load(state) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_make_permanent_keeps_zeros_through_save_and_load():
    model = create_model("resnet8")
    apply_pruning(model, 0.7)
    pruned = sparsity(model)
    make_permanent(model)
    state = save_load(model.state_dict())
    assert not [k for k in state if k.endswith("_orig") or k.endswith("_mask")]
    assert all(not m._forward_pre_hooks for m, _ in prunable(model))

    fresh = create_model("resnet8")
    fresh.load_state_dict(state)  # a plain, never-pruned model accepts it
    assert sparsity(fresh) == pytest.approx(pruned)
    assert pruned["sparsity_pruned"] == pytest.approx(0.7, abs=1e-3)
    assert 0 < pruned["sparsity_total"] < pruned["sparsity_pruned"]


def test_resume_mid_fine_tune_via_identity_masks():
    model = create_model("resnet8")
    apply_pruning(model, 0.5, scope="layerwise")
    state = save_load(model.state_dict())
    assert any(k.endswith("weight_mask") for k in state)

    fresh = create_model("resnet8")
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(state)  # the reason attach_identity_masks exists
    attach_identity_masks(fresh)
    fresh.load_state_dict(state)
    assert sparsity(fresh) == pytest.approx(sparsity(model))
    x = torch.randn(2, 3, 32, 32)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x), model(x))


def test_identity_masks_change_nothing_and_skip_already_pruned():
    model = tiny()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    attach_identity_masks(model)
    assert torch.equal(model(x), ref)
    assert sparsity(model)["sparsity_pruned"] == 0.0
    apply_pruning(model, 0.4)  # pruning on top of identity masks composes
    mask_before = model[0].weight_mask.clone()
    attach_identity_masks(model)
    assert torch.equal(model[0].weight_mask, mask_before)


def test_sparsity_reads_effective_weight_even_when_stale():
    model = tiny()
    apply_pruning(model, 0.5)
    with torch.no_grad():  # an update to weight_orig without a forward leaves .weight stale
        for m, _ in prunable(model):
            m.weight_orig.zero_()
    assert (model[0].weight != 0).any()  # .weight still shows the old values...
    assert sparsity(model)["sparsity_pruned"] == 1.0  # ...but the next forward would see zeros
