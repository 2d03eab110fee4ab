import io
import zlib

import pytest
import torch
from torch import nn

from kdtune.measure import (
    accuracy,
    count_flops,
    count_params,
    device_label,
    measure_speed,
    model_size_mb,
)
from kdtune.models import create_model
from kdtune.prune import apply_pruning, make_permanent


def small() -> nn.Sequential:
    torch.manual_seed(0)
    # conv: 8*3*3*3 + 8 = 224 params; linear: 8*10 + 10 = 90 params
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )


def test_count_params_and_nonzero():
    model = small()
    with torch.no_grad():
        model[0].bias.zero_()
    assert count_params(model) == {"params": 314, "nonzero_params": 306}


def test_counts_identical_with_masks_attached_and_after_make_permanent():
    model = create_model("resnet8")
    apply_pruning(model, 0.6)
    masked = (count_params(model), model_size_mb(model))
    assert masked[0]["params"] == sum(p.numel() for p in create_model("resnet8").parameters())
    assert masked[0]["nonzero_params"] < 0.5 * masked[0]["params"]
    make_permanent(model)
    # Masks are folded before saving, so even the compressed size is the same.
    assert (count_params(model), model_size_mb(model)) == masked


def test_model_size_dense_sparse_and_disk():
    model = small()
    with torch.no_grad():
        model[0].weight[:4] = 0  # 108 of 216 conv weights zero
    sizes = model_size_mb(model)
    assert sizes["size_mb_dense"] == pytest.approx(314 * 4 / 1e6)
    # conv.weight: 108 nnz * (4 + 2-byte index); every other tensor is dense-cheaper as is.
    expected_sparse = 108 * 6 + (8 + 80 + 10) * 4
    assert sizes["size_mb_sparse"] == pytest.approx(expected_sparse / 1e6)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert sizes["size_mb_disk"] == pytest.approx(len(zlib.compress(buf.getvalue(), 6)) / 1e6)


def test_sparse_index_width_switches_at_65536_elements():
    big = nn.Linear(256, 256, bias=False)  # 65,536 elements: needs 4-byte indices
    with torch.no_grad():
        big.weight.zero_()
        big.weight[0, :10] = 1.0
    assert model_size_mb(big)["size_mb_sparse"] == pytest.approx(10 * 8 / 1e6)
    below = nn.Linear(255, 256, bias=False)
    with torch.no_grad():
        below.weight.zero_()
        below.weight[0, :10] = 1.0
    assert model_size_mb(below)["size_mb_sparse"] == pytest.approx(10 * 6 / 1e6)


def test_pruning_shrinks_sparse_and_disk_size_but_not_dense():
    model = create_model("resnet8")
    before = model_size_mb(model)
    apply_pruning(model, 0.9)
    after = model_size_mb(model)
    assert after["size_mb_dense"] == before["size_mb_dense"]
    assert after["size_mb_sparse"] < 0.3 * before["size_mb_sparse"]
    assert after["size_mb_disk"] < 0.5 * before["size_mb_disk"]


def test_flops_of_known_layers_per_image():
    model = small().train()
    # conv: 2 * (3*3*3) MACs per output * 8 channels * 32*32 positions; linear: 2 * 8 * 10
    expected = 2 * 27 * 8 * 32 * 32 + 2 * 8 * 10
    assert count_flops(model, (1, 3, 32, 32)) == expected
    assert count_flops(model, (4, 3, 32, 32)) == expected  # per image, not per batch
    assert model.training  # mode restored


def test_flops_are_dense_and_cifar_stem_costs_more():
    model = create_model("resnet8")
    dense = count_flops(model)
    assert 20e6 < dense < 30e6  # ~12M multiply-adds, doubled, plus projections
    apply_pruning(model, 0.9)
    assert count_flops(model) == dense
    # The ImageNet stem works on 1/16 of the pixels from the first stage on.
    assert count_flops(create_model("resnet8", stem="standard")) < dense / 8


def test_device_label_cpu():
    label = device_label("cpu")
    assert label.startswith("cpu")
    assert len(label) > len("cpu ")


def test_measure_speed_cpu_restores_threads_mode_and_device():
    model = small().train()
    threads_before = torch.get_num_threads()
    stats = measure_speed(model, "cpu", input_size=16, batch=4, warmup=1, runs=5, threads=1)
    assert set(stats) == {
        "latency_ms_b1", "latency_ms_b1_p10", "latency_ms_b1_p90", "throughput_ips",
        "throughput_batch",
        "measure_device", "measure_threads", "measure_precision", "measure_channels_last",
    }
    assert 0 < stats["latency_ms_b1_p10"] <= stats["latency_ms_b1"] <= stats["latency_ms_b1_p90"]
    assert stats["throughput_ips"] > 0 and stats["throughput_batch"] == 4
    assert stats["measure_threads"] == 1
    assert stats["measure_precision"] == "fp32" and stats["measure_channels_last"] is False
    assert stats["measure_device"] == device_label("cpu")
    assert torch.get_num_threads() == threads_before
    assert model.training
    assert model[0].weight.is_contiguous()


def test_measure_speed_bf16_on_cpu_and_pruned_model():
    model = create_model("cnn4")
    apply_pruning(model, 0.5)
    stats = measure_speed(model, "cpu", input_size=32, batch=2, warmup=1, runs=3, bf16=True)
    assert stats["measure_precision"] == "bf16"
    assert stats["measure_threads"] == torch.get_num_threads()
    assert hasattr(model.features[0], "weight_mask")  # benchmarked a copy, the masks are still ours


def batches_of(model, n_batches=3, size=8):
    torch.manual_seed(1)
    out = []
    with torch.no_grad():
        model.eval()
        for _ in range(n_batches):
            x = torch.randn(size, 3, 8, 8)
            out.append((x, model(x).argmax(1)))
    return out


def test_accuracy_counts_correct_and_restores_mode():
    model = small()
    data = batches_of(model)
    model.train()
    assert accuracy(model, data) == 1.0
    assert model.training
    flipped = [(x, (y + 1) % 10) for x, y in data]
    assert accuracy(model, flipped) == 0.0
    half = [(x, torch.where(torch.arange(8) < 2, y, (y + 1) % 10)) for x, y in data]
    assert accuracy(model, half) == pytest.approx(0.25)
    assert accuracy(model, data, autocast_bf16=True) > 0.5


def test_accuracy_reads_device_once(monkeypatch):
    model = small()
    data = batches_of(model, n_batches=5)
    calls = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or real_item(self))
    accuracy(model, data)
    assert len(calls) == 1


def test_accuracy_accepts_a_generator():
    model = small()
    data = batches_of(model)
    assert accuracy(model, (b for b in data)) == 1.0
    with pytest.raises(ValueError):
        accuracy(model, [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_speed_and_accuracy_on_cuda():
    model = create_model("resnet8")
    apply_pruning(model, 0.5)
    stats = measure_speed(model, "cuda", batch=8, warmup=2, runs=5)
    assert stats["measure_precision"] == "bf16" and stats["measure_channels_last"] is True
    assert stats["measure_device"].startswith("cuda:0 ")
    assert next(model.parameters()).device.type == "cpu"  # the caller's model did not move
    data = [(x.cuda(), y.cuda()) for x, y in batches_of(model, size=4)]
    gpu = model.cuda()
    assert accuracy(gpu, data) >= 0.9  # labels came from CPU fp32; TF32 on GPU may flip a near-tie
    assert accuracy(gpu, data, autocast_bf16=True) > 0.5
    assert count_flops(gpu) == count_flops(create_model("resnet8"))
