"""CPU fusions: the fused network computes what the folded one does, with fewer passes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from derain_cli.bench import make_variant_runner, perturb_bn
from derain_cli.models import RDMC, RDMCConfig, SemiDRDNet, SemiDRDNetConfig
from derain_cli.models.cpu_fusion import (
    FusedConv,
    FusedEncoderBranch,
    FusedRDMCStage,
    FusedSum,
    _channel_means,
    _max_pool2,
    _upsample,
    fuse_for_cpu,
    fusion_available,
)
from derain_cli.models.deploy import SplitInputConv, SummedConvs, fold_for_inference
from derain_cli.models.semi_drdnet import ContextAggregationBlock, RainResidualBlock
from derain_cli.torch_runner import TorchRunner

needs_fusion = pytest.mark.skipif(not fusion_available(),
                                  reason="this PyTorch has no usable oneDNN fused convs")

CL = torch.channels_last


def _semi() -> SemiDRDNet:
    torch.manual_seed(0)
    net = SemiDRDNet(SemiDRDNetConfig(width=16, rain_blocks=2, detail_blocks=2, se_reduction=4))
    for m in net.modules():
        if isinstance(m, nn.PReLU):
            m.weight.data.uniform_(0.0, 1.0)
    return perturb_bn(net).eval()


def _rdmc() -> RDMC:
    torch.manual_seed(2)
    return perturb_bn(RDMC(RDMCConfig(channels=(4, 8, 8, 16, 16), stages=2))).eval()


def _pair(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    folded = fold_for_inference(net, max_prelu=False).to(memory_format=CL)
    return folded, fuse_for_cpu(copy.deepcopy(folded))


def test_fusions_are_usable_with_this_pytorch():
    """The pinned PyTorch has the private ops; a release that drops them would silently
    lose the speed, so the CI says so."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("PyTorch built without oneDNN")
    assert fusion_available()


@needs_fusion
def test_semi_drdnet_fused_matches_in_every_mode():
    folded, fused = _pair(_semi())
    kinds = {type(m) for m in fused.modules()}
    assert not kinds & {SummedConvs, RainResidualBlock, ContextAggregationBlock}
    assert sum(isinstance(m, FusedSum) for m in fused.modules()) == 2 * 2  # 2 DCCLs a block
    x = torch.rand(2, 3, 37, 45).contiguous(memory_format=CL)
    mask = torch.rand(2, 1, 37, 45)
    with torch.inference_mode():
        pooled = folded.se_sums(x) / (37 * 45) * 1.3 + 0.05
        assert torch.allclose(fused(x), folded(x), atol=1e-5)
        assert torch.allclose(fused(x, pooled), folded(x, pooled), atol=1e-5)
        assert torch.allclose(fused.se_sums(x, pooled, mask), folded.se_sums(x, pooled, mask),
                              rtol=1e-5, atol=1e-3)


@needs_fusion
@pytest.mark.parametrize("shape", [(1, 3, 32, 48), (2, 3, 37, 53)])
def test_rdmc_fused_matches(shape):
    folded, fused = _pair(_rdmc())
    assert isinstance(fused.stage, FusedRDMCStage)
    assert all(isinstance(b, FusedEncoderBranch) for b in fused.stage.branches)
    kinds = {type(m) for m in fused.modules()}
    assert not kinds & {SplitInputConv, nn.ReLU}  # every ReLU went into a convolution
    relu_convs = sum(isinstance(m, FusedConv) and m.relu for m in fused.modules())
    assert relu_convs == 3 * 5 * 2 + 2 + 4  # the branches' units, bottleneck, decoders' 2nd
    relu_sums = sum(isinstance(m, FusedSum) and m.relu for m in fused.modules())
    assert relu_sums == 5 + 4  # the fusions of the branches, the decoders' first convs
    x = torch.rand(shape).contiguous(memory_format=CL)
    with torch.inference_mode():
        assert torch.allclose(fused(x), folded(x), atol=1e-5)


@needs_fusion
def test_an_rdmc_of_one_dilation_fuses_one_conv_sums_with_their_relu():
    """One dilation (`--model-config '{"dilations": [2]}'`) makes every fused sum a single
    convolution: the ReLU after it was left out unseen by a mutation audit (10.7e-3 off)."""
    torch.manual_seed(3)
    net = perturb_bn(RDMC(RDMCConfig(channels=(4, 8, 8, 16, 16), dilations=(2,),
                                     stages=1))).eval()
    folded, fused = _pair(net)
    assert any(isinstance(m, FusedSum) and m.relu and len(m.convs) == 1
               for m in fused.modules())
    x = torch.rand(1, 3, 40, 56).contiguous(memory_format=CL)
    with torch.inference_mode():
        assert torch.allclose(fused(x), folded(x), atol=1e-5)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.float() - b.float()) ** 2).mean()))


@needs_fusion
@pytest.mark.parametrize("make", [_semi, _rdmc])
def test_fused_bf16_is_as_close_to_fp32_as_the_plain_ops(make):
    folded, fused = _pair(make())
    x = torch.rand(1, 3, 48, 64).contiguous(memory_format=CL)
    with torch.inference_mode():
        ref = folded(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain, got = folded(x), fused(x)
    assert got.shape == ref.shape and torch.isfinite(got.float()).all()
    assert _psnr(got, ref) > _psnr(plain, ref) - 3 and _psnr(got, ref) > 40


def test_channel_means_of_a_bf16_map_by_product():
    torch.manual_seed(4)
    x = (torch.rand(2, 16, 33, 40) * 3).to(torch.bfloat16).contiguous(memory_format=CL)
    want = x.double().mean(dim=(2, 3))
    got = _channel_means(x)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 16)
    assert torch.allclose(got.double(), want, rtol=1e-2)
    plain = torch.rand(2, 5, 6, 7)  # other maps: the plain mean
    assert torch.equal(_channel_means(plain), plain.mean(dim=(2, 3)))


@pytest.mark.parametrize("factor", [2, 4, 16])
@pytest.mark.parametrize("shape", [(2, 5, 8, 12), (1, 3, 1, 3), (1, 4, 7, 2)])
def test_upsample_is_bilinear_interpolation(factor, shape):
    torch.manual_seed(8)
    x = torch.randn(shape)
    want = nn.functional.interpolate(x, scale_factor=float(factor), mode="bilinear",
                                     align_corners=False)
    for t in (x.contiguous(memory_format=CL), x.contiguous()):
        got = _upsample(t, factor)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
    got = _upsample(x.to(torch.bfloat16).contiguous(memory_format=CL), factor)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=CL)
    assert torch.allclose(got.float(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape", [(2, 5, 8, 12), (1, 3, 7, 10), (1, 4, 6, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_pool2_is_max_pool2d(shape, dtype):
    torch.manual_seed(7)
    x = torch.randn(shape).to(dtype)
    x[0, 0, 1, 1] = float("nan")
    for t in (x.contiguous(memory_format=CL), x.contiguous()):
        got, want = _max_pool2(t), nn.functional.max_pool2d(t, 2)
        assert got.shape == want.shape
        assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
        assert got.isnan().sum() == want.isnan().sum() == 1


@needs_fusion
def test_fused_conv_runs_plain_ops_when_gradients_are_wanted():
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 6, 3, padding=2, dilation=2)
    fc = FusedConv(conv, relu=True)
    x = torch.randn(1, 4, 11, 13, requires_grad=True)
    y = fc(x)
    y.sum().backward()
    assert torch.allclose(y, torch.relu(conv(x)), atol=1e-6)
    assert x.grad is not None and conv.weight.grad is not None
    with torch.inference_mode():
        assert torch.allclose(fc(x.detach()), torch.relu(conv(x.detach())), atol=1e-5)
        out = torch.ones(1, 6, 11, 13)
        fc.accumulate(out, x.detach(), relu=False)
        assert torch.allclose(out, 1 + conv(x.detach()), atol=1e-5)


@needs_fusion
@pytest.mark.parametrize("make", [_semi, _rdmc])
def test_a_fused_network_still_trains(make):
    """Nothing is overwritten in place while autograd records (a gate's sigmoid output
    multiplied in place broke backward), so gradients flow as through the plain one."""
    folded, fused = _pair(make())
    x = torch.rand(1, 3, 32, 48).contiguous(memory_format=CL)
    fused(x).square().mean().backward()
    folded(x).square().mean().backward()
    pairs = [(a, b) for a, b in zip(folded.parameters(), fused.parameters(), strict=True)]
    assert pairs and all(b.grad is not None for _, b in pairs)
    assert all(torch.allclose(a.grad, b.grad, atol=1e-5) for a, b in pairs)


@needs_fusion
def test_a_fused_sum_with_relu_runs_on_nchw_maps_in_bf16():
    """The fused ReLU is for channels-last maps: on NCHW ones PyTorch's own sum-and-ReLU
    has no bf16 kernel (an internal assert, an audit)."""
    torch.manual_seed(9)
    convs = [nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, bias=False)]
    fs = FusedSum(convs, split=True, relu=True)
    xs = [torch.rand(1, 4, 8, 8), torch.rand(1, 4, 8, 8)]
    with torch.inference_mode():
        want = torch.relu(convs[0](xs[0]) + convs[1](xs[1]))
        for layout in (torch.contiguous_format, CL):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = fs([x.contiguous(memory_format=layout) for x in xs])
            assert torch.allclose(got.float(), want, atol=0.05)


def test_bf16_without_onednn_bf16_runs_the_plain_ops(tmp_path):
    """Where oneDNN has no bf16 convolutions (an AVX2 CPU, simulated by capping its ISA),
    a bf16 runner still runs, emulated, as it did before the fusions (an audit: the
    bench's --force-bf16 crashed)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, torch\n"
        "from derain_cli.models import RDMC, RDMCConfig\n"
        "from derain_cli.torch_runner import TorchRunner\n"
        "assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()\n"
        "net = RDMC(RDMCConfig(channels=(4, 8, 8, 16, 16), stages=1)).eval()\n"
        "y = TorchRunner(net, torch.device('cpu'), 'bf16').forward(\n"
        "    np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32), None)\n"
        "assert y.shape == (1, 3, 32, 32) and np.isfinite(y).all()\n"
        "print('ran')\n")
    env = {**__import__("os").environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and "ran" in done.stdout, done.stderr[-2000:]


@needs_fusion
def test_fused_conv_casts_again_after_the_weights_change():
    torch.manual_seed(6)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    fc = FusedConv(conv).eval()
    x = torch.rand(1, 4, 9, 9)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = fc(x)
        assert first.dtype == torch.bfloat16
    with torch.no_grad():
        conv.weight.mul_(-1)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        again = fc(x)
    with torch.inference_mode():
        assert torch.allclose(again.float(), conv(x), atol=0.05)
    with torch.no_grad():
        conv.bias.add_(10)  # the bias alone
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        biased = fc(x)
    with torch.inference_mode():
        assert torch.allclose(biased.float(), conv(x), atol=0.1)


@pytest.mark.parametrize("value", ["off", "0", "no", "false", "OFF", " Off "])
def test_fusion_can_be_turned_off(monkeypatch, value):
    """Every spelling the variable's docstring promises (a mutation audit: only "off" was
    tried)."""
    from derain_cli.models import cpu_fusion_enabled

    monkeypatch.setenv("DERAIN_CPU_FUSION", value)
    assert not cpu_fusion_enabled()
    folded = fold_for_inference(_rdmc(), max_prelu=False)
    fuse_for_cpu(folded)
    assert not any(isinstance(m, (FusedConv, FusedSum)) for m in folded.modules())
    runner = TorchRunner(_semi(), torch.device("cpu"), "fp32")
    assert not any(isinstance(m, FusedSum) for m in runner.model.modules())


@needs_fusion
def test_the_cpu_runner_fuses_and_agrees_with_the_plain_one():
    net = _semi()
    fused = TorchRunner(net, torch.device("cpu"), "fp32")
    plain = TorchRunner(net, torch.device("cpu"), "fp32", fuse=False)
    assert any(isinstance(m, FusedSum) for m in fused.model.modules())
    assert not any(isinstance(m, FusedSum) for m in plain.model.modules())
    x = np.random.default_rng(0).random((1, 3, 40, 52), dtype=np.float32)
    assert np.allclose(fused.forward(x, None), plain.forward(x, None), atol=1e-5)


def test_bench_times_bf16_without_the_fusions():
    net = _semi()
    runner = make_variant_runner(net, "bf16_unfused", torch.device("cpu"), force_bf16=True)
    assert isinstance(runner, TorchRunner) and runner.precision == "bf16"
    assert not any(isinstance(m, FusedSum) for m in runner.model.modules())
    baseline = make_variant_runner(net, "fp32", torch.device("cpu"))
    assert not any(isinstance(m, FusedSum) for m in baseline.model.modules())
    assert "CPUs" in make_variant_runner(net, "bf16_unfused", torch.device("cuda"))
