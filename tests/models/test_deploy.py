"""Inference rewrites: the folded network computes what the trained one does, with fewer ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from derain_cli.bench import perturb_bn
from derain_cli.models import RDMC, RDMCConfig, SemiDRDNet, SemiDRDNetConfig
from derain_cli.models.deploy import (
    FoldedRDMCStage,
    MaxPReLU,
    SummedConvs,
    fold_dccl,
    fold_for_inference,
)
from derain_cli.models.semi_drdnet import DCCL


def _semi() -> SemiDRDNet:
    torch.manual_seed(0)
    net = SemiDRDNet(SemiDRDNetConfig(width=16, rain_blocks=2, detail_blocks=2, se_reduction=4))
    for m in net.modules():  # slopes away from the 0.25 initialisation, still in [0, 1]
        if isinstance(m, nn.PReLU):
            m.weight.data.uniform_(0.0, 1.0)
    return perturb_bn(net).eval()


def test_fold_dccl_with_batch_norm_matches():
    torch.manual_seed(1)
    dccl, bn = DCCL(8, (1, 3, 5)), nn.BatchNorm2d(8)
    perturb_bn(nn.Sequential(bn))
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.2, 0.2)
    bn.eval()
    x = torch.randn(2, 8, 23, 31)
    folded = fold_dccl(dccl, bn)
    assert isinstance(folded, SummedConvs) and len(folded.convs) == 3
    assert [c.dilation for c in folded.convs] == [(1, 1), (3, 3), (5, 5)]
    with torch.no_grad():
        assert torch.allclose(folded(x), bn(dccl(x)), atol=1e-5)
        assert torch.allclose(fold_dccl(dccl)(x), dccl(x), atol=1e-5)


def test_semi_drdnet_folded_matches_in_every_mode():
    net = _semi()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_for_inference(net)
    x = torch.rand(2, 3, 37, 45)
    with torch.no_grad():
        pooled = net.se_sums(x) / (37 * 45) * 1.3 + 0.05
        mask = torch.rand(2, 1, 37, 45)
        assert torch.allclose(folded(x), net(x), atol=1e-5)
        assert torch.allclose(folded(x, pooled), net(x, pooled), atol=1e-5)
        assert torch.allclose(folded.se_sums(x, pooled, mask), net.se_sums(x, pooled, mask),
                              rtol=1e-5, atol=1e-3)
    # the trained module is untouched, and the copy really has fewer operators
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    kinds = {type(m) for m in folded.modules()}
    assert nn.BatchNorm2d not in kinds and DCCL not in kinds and nn.PReLU not in kinds
    assert MaxPReLU in kinds and SummedConvs in kinds
    n_conv = sum(isinstance(m, nn.Conv2d) for m in folded.modules())
    assert n_conv == sum(isinstance(m, nn.Conv2d) for m in net.modules()) - 4  # 1x1 fusions


def test_folding_keeps_batch_norms_epsilon_and_gives_an_eval_copy():
    """A channel whose running variance is near zero is where BatchNorm's epsilon matters
    (dropped, the folded network was 1.78 off there); a network still in train mode (as
    training or distillation hold it) folds to an eval copy and stays as it was. Both were
    surviving mutants of a mutation audit."""
    net = _semi()
    with torch.no_grad():  # a nearly dead channel after each DCCL (those batch norms are
        for bn in (m for m in net.detail_net.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_var[0], bn.weight[0] = 1e-7, 1e-3  # folded by derain's own code)
    x = torch.rand(1, 3, 29, 31)
    with torch.no_grad():
        assert torch.allclose(fold_for_inference(net)(x), net(x), atol=1e-4)
    net.train()
    folded = fold_for_inference(net)
    assert net.training and not folded.training
    with torch.no_grad():
        assert torch.allclose(folded(x), net.eval()(x), atol=1e-4)


def test_prelu_outside_unit_slopes_is_kept():
    net = _semi()
    net.detail_net.head[1].weight.data[0] = 1.5  # max(x, 1.5x) would be wrong for x > 0
    folded = fold_for_inference(net)
    assert isinstance(folded.detail_net.head[1], nn.PReLU)
    assert isinstance(folded.rain_net.head[1], MaxPReLU)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)
    assert isinstance(fold_for_inference(net, max_prelu=False).rain_net.head[1], nn.PReLU)


@pytest.mark.parametrize("shape", [(1, 3, 32, 48), (1, 3, 37, 53)])
def test_rdmc_folded_matches(shape):
    torch.manual_seed(2)
    net = perturb_bn(RDMC(RDMCConfig(channels=(4, 8, 8, 16, 16), stages=2))).eval()
    folded = fold_for_inference(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(shape)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-4)


def test_rdmc_folded_projects_before_upsampling():
    """The recruitment and up convs see the low-resolution features (FoldedRDMCStage)."""
    torch.manual_seed(3)
    net = perturb_bn(RDMC(RDMCConfig(channels=(4, 8, 8, 16, 16), stages=1))).eval()
    folded = fold_for_inference(net)
    assert isinstance(folded.stage, FoldedRDMCStage)
    seen: dict[str, tuple[int, int]] = {}

    def spy(name):
        return lambda mod, args: seen.__setitem__(name, tuple(args[0].shape[-2:]))

    folded.stage.up[0].register_forward_pre_hook(spy("up0"))
    folded.stage.recruit[0].proj[-1].register_forward_pre_hook(spy("proj_deepest"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-4)
    assert seen["up0"] == (32, 32)  # level 1's output, before its 2x upsampling
    assert seen["proj_deepest"] == (4, 4)  # level 4 (64 / 16), not level 0's 64 x 64
