"""Losses: SSIM against scikit-image, supervised terms, contrastive terms, VGG19 from a hub."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as save_safetensors

from derain_cli import losses as L

SMALL_VGG = [4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]


pytestmark = pytest.mark.usefixtures("one_thread")


def _smooth_batch(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                           align_corners=False)


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    a = _smooth_batch(1, 40, 0)
    b = (a + 0.1 * torch.rand(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    ours = float(L.ssim_torch(a, b))
    ref = np.mean([
        structural_similarity(a[0, c].double().numpy(), b[0, c].double().numpy(),
                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=1.0)
        for c in range(3)
    ])
    assert ours == pytest.approx(ref, abs=2e-4)
    assert float(L.ssim_torch(a, a)) == pytest.approx(1.0, abs=1e-5)


def test_supervised_losses():
    b = _smooth_batch(2)
    assert float(L.semi_drdnet_supervised(b, b, b)) == pytest.approx(0.0, abs=1e-5)
    noisy = (b + 0.2).clamp(0, 1)
    full = float(L.semi_drdnet_supervised(noisy, b, b))
    only_coarse = float(L.semi_drdnet_supervised(b, noisy, b))
    assert only_coarse == pytest.approx(0.1 * full, rel=1e-4)  # first estimate weighted 0.1
    one = float(L.rdmc_supervised([noisy], b))
    assert float(L.rdmc_supervised([noisy, b], b)) == pytest.approx(one / 2, rel=1e-4, abs=1e-6)


def test_rdmc_l1_term_charges_a_brightness_offset_the_paper_loss_hardly_sees():
    """A uniform 8-level offset costs the paper's 0.1 MSE + (1 - SSIM) almost nothing; the
    optional L1 term charges it in full (weight x offset)."""
    b = 0.25 + 0.5 * _smooth_batch(2)
    dark = b - 8 / 255
    paper = float(L.rdmc_supervised([dark], b))
    with_l1 = float(L.rdmc_supervised([dark], b, l1_weight=1.0))
    assert paper < 0.01
    assert with_l1 - paper == pytest.approx(8 / 255, rel=1e-3)
    assert float(L.rdmc_supervised([b], b, l1_weight=1.0)) == pytest.approx(0.0, abs=1e-5)


def _three():
    pos = _smooth_batch(2, 32, 1)
    neg = (pos + 0.5 * _smooth_batch(2, 32, 2)).clamp(0, 1)
    return pos, neg


@pytest.mark.parametrize("kind", ["vgg", "self_aligned", "self_global"])
def test_contrast_decreases_toward_positive(kind):
    torch.manual_seed(0)
    pos, neg = _three()
    net = L.VGG19Features(SMALL_VGG) if kind == "vgg" else L.SelfFeatures()
    c = L.Contrast(net)
    aligned = kind != "self_global"

    def at(t: float) -> float:
        anchor = neg + t * (pos - neg)
        return float(c(anchor, [pos], [neg], aligned=aligned))

    assert at(0.9) < at(0.5) < at(0.1)


def test_aligned_self_contrast_is_zero_at_the_positive():
    """The model-side term has its floor at the right answer (no push to invent texture)."""
    torch.manual_seed(0)
    pos, neg = _three()
    c = L.Contrast(L.SelfFeatures())
    assert float(c(pos, [pos], [neg])) == pytest.approx(0.0, abs=1e-6)
    assert float(c(neg, [pos], [neg])) > 0.1


def test_consistency_loss_is_the_mean_absolute_difference():
    """finetune's --consistency is an L1 pull (a mutation audit: an L2 form survived every
    test): one pixel off by 0.5 and three exact give 0.125, where MSE would give 0.0625."""
    ref = torch.zeros(1, 1, 2, 2)
    out = ref.clone()
    out[0, 0, 0, 0] = 0.5
    assert float(L.consistency_loss(out, ref)) == pytest.approx(0.125)
    assert float(L.consistency_loss(ref - out, ref)) == pytest.approx(0.125)  # sign-blind
    assert L.consistency_loss(out.bfloat16(), ref).dtype == torch.float32


def test_psnr_loss_is_minus_the_mean_per_image_psnr():
    """Checked against metrics.psnr, image by image; eps caps a perfect crop at 50 dB."""
    from derain_cli.metrics import psnr

    b = _smooth_batch(2)
    g = torch.Generator().manual_seed(3)
    pred = (b + torch.randn(b.shape, generator=g) * torch.tensor([0.01, 0.05]).view(2, 1, 1, 1))
    want = [psnr(pred[i].double().numpy(), b[i].double().numpy(), data_range=1.0)
            for i in range(2)]
    assert float(L.psnr_loss(pred, b, eps=0.0)) == pytest.approx(-np.mean(want), rel=1e-5)
    assert float(L.psnr_loss(b, b)) == pytest.approx(-50.0, abs=1e-4)
    # the near-clean image's error weighs more: the same added error costs it more dB
    worse = pred + torch.tensor([0.01, 0.0]).view(2, 1, 1, 1)
    worse2 = pred + torch.tensor([0.0, 0.01]).view(2, 1, 1, 1)
    assert float(L.psnr_loss(worse, b)) > float(L.psnr_loss(worse2, b))


@pytest.mark.parametrize("arch", ["semi-drdnet", "rdmc"])
def test_psnr_term_is_added_to_the_supervised_loss(arch):
    clean = _smooth_batch(2)
    x = (clean + 0.1).clamp(0, 1)
    outputs = (x, x, torch.zeros_like(x)) if arch == "semi-drdnet" else (x, x)
    base, _ = L.Criterion(arch, None)(x=x, outputs=outputs, clean=clean)
    loss, parts = L.Criterion(arch, None, psnr_weight=0.01)(x=x, outputs=outputs, clean=clean)
    assert float(loss - base) == pytest.approx(0.01 * float(L.psnr_loss(x, clean)), rel=1e-5)
    assert parts["psnr"] == pytest.approx(-float(L.psnr_loss(x, clean)), rel=1e-6)


def test_criterion_semi_drdnet_terms_and_gradients():
    torch.manual_seed(0)
    feats = L.SelfFeatures()
    crit = L.Criterion("semi-drdnet", feats, contrast_weight=0.1)
    clean, rain = _smooth_batch(2, 32, 1), 0.3 * _smooth_batch(2, 32, 2)
    x = torch.cat([(clean + rain).clamp(0, 1), _smooth_batch(2, 32, 3)])  # 2 labeled + 2 real
    out = x.clone().requires_grad_(True)
    r = torch.zeros_like(x, requires_grad=True)
    loss, parts = crit(x=x, outputs=(out, x - r, r), clean=clean,
                       rainy_aug=(clean + 0.5 * rain).clamp(0, 1), n_labeled=2)
    assert {"sup", "c_bg", "c_rain", "c_bg_u", "c_rain_u", "enc"} <= set(parts)
    loss.backward()
    assert out.grad is not None and float(out.grad[2:].abs().sum()) > 0  # unlabeled rows too
    assert all(p.grad is not None for p in crit.aux_parameters())
    # the model's contrast terms alone give the encoder no gradient (it is used frozen)
    for p in feats.parameters():
        p.grad = None
    out2 = x.clone().requires_grad_(True)
    crit.contrast(out2, [clean.repeat(2, 1, 1, 1)], [x]).backward()
    assert all(p.grad is None for p in feats.parameters())
    assert out2.grad is not None


def test_self_contrast_ramps_in_while_the_encoder_learns():
    """A fresh self encoder is random: the model's contrastive terms start at weight 0 and
    reach full weight after SELF_FEATURES_RAMP steps; the encoder's own loss is always on."""
    torch.manual_seed(0)
    crit = L.Criterion("semi-drdnet", L.SelfFeatures(), contrast_weight=0.1)
    clean, rain = _smooth_batch(2, 32, 1), 0.3 * _smooth_batch(2, 32, 2)
    x = torch.cat([(clean + rain).clamp(0, 1), _smooth_batch(2, 32, 3)])
    outs = (x, x, torch.zeros_like(x))

    def contrast_part(step):
        crit.ramp(step)
        crit._gen.manual_seed(5)  # the same patches and noise each time
        loss, parts = crit(x=x, outputs=outs, clean=clean, n_labeled=2)
        return float(loss.detach()) - parts["sup"] - parts["enc"], parts

    zero, parts = contrast_part(0)
    full_terms = sum(v * (L.UNLABELED_FACTOR if k.endswith("_u") else 1.0)
                     for k, v in parts.items() if k.startswith("c_"))
    assert abs(zero) < 1e-5 and parts["enc"] > 0 and full_terms > 0
    half, _ = contrast_part(L.SELF_FEATURES_RAMP // 2)
    assert half == pytest.approx(0.1 * 0.5 * full_terms, rel=1e-4)
    full, _ = contrast_part(10 * L.SELF_FEATURES_RAMP)
    assert full == pytest.approx(0.1 * full_terms, rel=1e-4)
    # a fixed feature network (VGG19) is meaningful from the start: no ramp
    fixed = L.Criterion("semi-drdnet", None)
    fixed.ramp(0)
    assert fixed.contrast_scale == 1.0


def test_rain_free_rows_get_the_supervised_loss_only():
    """Their rainy negative equals the positive: contrast only on the rows with rain."""
    torch.manual_seed(0)
    crit = L.Criterion("semi-drdnet", L.VGG19Features(SMALL_VGG), contrast_weight=0.1)
    clean, rain = _smooth_batch(2, 32, 1), 0.3 * _smooth_batch(2, 32, 2)
    x = (clean + rain).clamp(0, 1)
    x[0] = clean[0]  # row 0 is a rain-free sample
    out = (0.5 * (x + clean)).requires_grad_(True)
    r = x - out.detach()
    free = torch.tensor([True, False])
    _, parts = crit(x=x, outputs=(out, x - r, r), clean=clean, n_labeled=2, rain_free=free)
    _, alone = crit(x=x[1:], outputs=(out[1:], (x - r)[1:], r[1:]), clean=clean[1:],
                    n_labeled=1)
    for k in ("c_bg", "c_rain"):
        assert parts[k] == pytest.approx(alone[k], rel=1e-5)
    _, mixed = crit(x=x, outputs=(out, x - r, r), clean=clean, n_labeled=2)
    assert mixed["c_bg"] != pytest.approx(parts["c_bg"], rel=1e-3)  # the mask matters
    _, none = crit(x=x, outputs=(out, x - r, r), clean=clean, n_labeled=2,
                   rain_free=torch.tensor([True, True]))
    assert set(none) == {"sup"}


@pytest.mark.parametrize("keep", ["rain,bg_u", "bg", "rain_u,bg"])
def test_contrast_terms_keep_a_subset(keep):
    """``--contrast-terms``: only the named terms are computed, each as in the full loss, and
    the loss is the supervised part plus exactly those (an ablation of one term is a flag)."""
    torch.manual_seed(0)
    feats = L.VGG19Features(SMALL_VGG)
    clean, rain = _smooth_batch(2, 32, 1), 0.3 * _smooth_batch(2, 32, 2)
    x = torch.cat([(clean + rain).clamp(0, 1), _smooth_batch(2, 32, 3)])
    out = 0.5 * (x + torch.cat([clean, clean]))
    r = x - out
    kw = dict(x=x, outputs=(out, x - r, r), clean=clean,
              rainy_aug=(clean + 0.5 * rain).clamp(0, 1), n_labeled=2)
    _, full = L.Criterion("semi-drdnet", feats, contrast_weight=0.1)(**kw)
    crit = L.Criterion("semi-drdnet", feats, contrast_weight=0.1, terms=keep)
    loss, parts = crit(**kw)
    names = {f"c_{t}" for t in keep.split(",")}
    assert set(parts) == {"sup"} | names
    for k in names:
        assert parts[k] == pytest.approx(full[k], rel=1e-5)
    expect = parts["sup"] + 0.1 * sum(
        parts[k] * (L.UNLABELED_FACTOR if k.endswith("_u") else 1.0) for k in names)
    assert float(loss) == pytest.approx(expect, rel=1e-5)


def test_rain_branch_is_zero_at_the_true_rain_layer():
    """The rain branch's only aligned positive is the true rain layer R* = O - B: a network
    that predicts exactly R* pays nothing, whatever other rain the sample carries
    (``rainy_aug``, which the branch once used as a second, misaligned positive)."""
    torch.manual_seed(0)
    crit = L.Criterion("semi-drdnet", L.VGG19Features(SMALL_VGG), contrast_weight=0.1,
                       terms="rain")
    clean, rain = _smooth_batch(2, 32, 1), 0.3 * _smooth_batch(2, 32, 2)
    x = clean + rain
    _, parts = crit(x=x, outputs=(clean, clean, x - clean), clean=clean,
                    rainy_aug=(clean + 0.3 * _smooth_batch(2, 32, 4)).clamp(0, 1), n_labeled=2)
    assert parts["c_rain"] == pytest.approx(0.0, abs=1e-6)


def test_contrast_terms_are_validated():
    assert L.parse_contrast_terms("rdmc", None) == ("bg", "bg_u")
    assert L.parse_contrast_terms("semi-drdnet", " rain_u, bg ") == ("bg", "rain_u")
    with pytest.raises(ValueError, match="rain not known for rdmc"):
        L.parse_contrast_terms("rdmc", "bg,rain")
    with pytest.raises(ValueError, match="choose from"):
        L.parse_contrast_terms("semi-drdnet", ",")
    # the rain branch's other forms are for ablations: named, never in "all"
    assert L.parse_contrast_terms("semi-drdnet", "rain_leak,bg") == ("bg", "rain_leak")
    assert "rain_out" not in L.parse_contrast_terms("semi-drdnet", "all")
    with pytest.raises(ValueError, match="rain_out not known for rdmc"):
        L.parse_contrast_terms("rdmc", "rain_out")


def test_rain_branch_variants_anchor_and_negatives():
    """``rain_out`` compares the final output's rain layer ``O - out`` (zero when the output
    is clean, whatever the rain network said); ``rain_leak`` compares the rain network's R,
    and its negative ``R* + detail(B)`` makes a rain layer with the background's edges in it
    cost more than one without."""
    torch.manual_seed(0)
    crit = L.Criterion("semi-drdnet", L.VGG19Features(SMALL_VGG), contrast_weight=0.1,
                       terms="rain_out,rain_leak")
    clean, rain = _smooth_batch(2, 32, 1), 0.3 * _smooth_batch(2, 32, 2)
    x = clean + rain
    wrong_r = torch.zeros_like(x)
    _, parts = crit(x=x, outputs=(clean, clean, wrong_r), clean=clean, n_labeled=2)
    assert set(parts) == {"sup", "c_rain_out", "c_rain_leak"}
    assert parts["c_rain_out"] == pytest.approx(0.0, abs=1e-6)
    assert parts["c_rain_leak"] > 0.1
    _, exact = crit(x=x, outputs=(clean, clean, x - clean), clean=clean, n_labeled=2)
    _, leaky = crit(x=x, outputs=(clean, clean, x - clean + 0.5 * L.detail_layer(clean)),
                    clean=clean, n_labeled=2)
    assert exact["c_rain_leak"] == pytest.approx(0.0, abs=1e-6)
    assert leaky["c_rain_leak"] > exact["c_rain_leak"] + 0.05


def test_criterion_rdmc():
    feats = L.VGG19Features(SMALL_VGG)
    crit = L.Criterion("rdmc", feats, contrast_weight=0.1)
    clean = _smooth_batch(2)
    x = (clean + 0.2).clamp(0, 1)
    loss, parts = crit(x=x, outputs=(x, clean), clean=clean, n_labeled=2)
    assert set(parts) == {"sup", "c_bg"}
    assert parts["c_bg"] == pytest.approx(0.0, abs=1e-6)  # output == clean: ratio 0
    assert crit.aux_parameters() == []


def _fake_vgg_bytes(widths=SMALL_VGG) -> bytes:
    """Random tensors with timm's ``vgg19.tv_in1k`` names (+ a classifier to be ignored)."""
    g = torch.Generator().manual_seed(0)
    state, cin, k = {}, 3, 0
    for i in (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34):
        w = widths[k] if k < len(widths) else widths[-1]
        state[f"features.{i}.weight"] = torch.randn(w, cin, 3, 3, generator=g) * 0.1
        state[f"features.{i}.bias"] = torch.zeros(w)
        cin, k = w, k + 1
    state["head.fc.weight"] = torch.randn(10, 4)
    state["head.fc.bias"] = torch.zeros(10)
    return save_safetensors(state)


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.mark.parametrize("pinned", [True, False])
def test_vgg19_from_local_hub(hub_server, tmp_path, online, pinned):
    data = _fake_vgg_bytes()
    hub_server.add("timm/vgg19.tv_in1k", "main", "model.safetensors", data)
    sha = hashlib.sha256(data).hexdigest() if pinned else None
    cache = tmp_path / "cache"
    assert not L.vgg19_cached(cache_dir=cache)
    net = L.load_vgg19(sha256=sha, endpoint=hub_server.url, cache_dir=cache)
    assert L.vgg19_cached(cache_dir=cache)
    feats = net(torch.rand(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [4, 8, 8, 8, 8]  # relu1_1 .. relu5_1
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert torch.equal(net.features[0].weight, safetensors_load(data)["features.0.weight"])
    assert not any(p.requires_grad for p in net.parameters())


def test_vgg19_wrong_layout_is_reported(hub_server, tmp_path, online):
    data = save_safetensors({"features.0.weight": torch.zeros(4, 3, 3, 3)})
    hub_server.add("timm/vgg19.tv_in1k", "main", "model.safetensors", data)
    with pytest.raises(L.ContrastUnavailable, match="features.2.weight"):
        L.load_vgg19(sha256=None, endpoint=hub_server.url, cache_dir=tmp_path / "c")


def test_vgg19_unreachable_hub_is_reported(hub_server, tmp_path, online):
    with pytest.raises(L.ContrastUnavailable):
        L.load_vgg19(sha256=None, endpoint=hub_server.url, cache_dir=tmp_path / "c")


def test_auto_features(monkeypatch):
    monkeypatch.setattr(L, "vgg19_cached", lambda *a, **k: False)
    net, label = L.build_features("auto")
    assert isinstance(net, L.SelfFeatures) and label.startswith("self")
    fake = L.VGG19Features(SMALL_VGG)
    monkeypatch.setattr(L, "vgg19_cached", lambda *a, **k: True)
    monkeypatch.setattr(L, "load_vgg19", lambda **k: fake)
    net, label = L.build_features("auto")
    assert net is fake and label.startswith("vgg19")
    with pytest.raises(ValueError):
        L.build_features("nope")


def test_vgg19_unreachable_fails_at_once(tmp_path):
    """Offline, --contrast-features vgg19 spent about 25 s in the Hub client's retries,
    printing raw resolver lines, before saying to use self (audit): one HEAD now."""
    import time

    from derain_cli.losses import ContrastUnavailable, load_vgg19

    t0 = time.monotonic()
    with pytest.raises(ContrastUnavailable, match="use --contrast-features self"):
        load_vgg19(sha256=None, endpoint="http://127.0.0.1:9", cache_dir=tmp_path)
    assert time.monotonic() - t0 < 5.0


# --- pinned by a mutation audit (2026-12-07): each test below failed under a one-line change
# of losses.py that every earlier test let through (a sign, a swapped positive and negative,
# a dropped term or detach, a constant) -----------------------------------------------------


def _mixed_batch():
    clean, rain = _smooth_batch(2, 32, 1), 0.3 * _smooth_batch(2, 32, 2)
    o = (clean + rain).clamp(0, 1)
    x = torch.cat([o, _smooth_batch(2, 32, 3)])
    aug = (clean + 0.5 * rain).clamp(0, 1)
    out = 0.5 * (x + torch.cat([clean, clean]))
    r = x - out
    return clean, o, x, aug, out, r


def test_rdmc_supervised_is_the_papers_formula():
    b = _smooth_batch(2)
    s = (b + 0.1 * _smooth_batch(2, 32, 5)).clamp(0, 1)
    want = 0.1 * torch.nn.functional.mse_loss(s, b) + (1 - L.ssim_torch(s, b))
    assert float(L.rdmc_supervised([s], b)) == pytest.approx(float(want), rel=1e-6)


def test_criterion_uses_its_ssim_weight():
    b = _smooth_batch(2)
    x = (b + 0.1).clamp(0, 1)
    _, p = L.Criterion("semi-drdnet", None, ssim_weight=0.0)(x=x, outputs=(x, x, x * 0), clean=b)
    assert p["sup"] == pytest.approx(float(L.semi_drdnet_supervised(x, x, b, ssim_weight=0.0)),
                                     rel=1e-6)


def test_semi_drdnet_background_branch_positive_and_negatives():
    torch.manual_seed(0)
    feats = L.VGG19Features(SMALL_VGG)
    clean, o, x, aug, out, r = _mixed_batch()
    crit = L.Criterion("semi-drdnet", feats, terms="bg")
    _, p = crit(x=o, outputs=(out[:2], out[:2], r[:2]), clean=clean, rainy_aug=aug, n_labeled=2)
    c = L.Contrast(feats)
    want = c(out[:2], [clean], [o, aug, (out[:2] + (o - clean)).clamp(0, 1)])
    assert p["c_bg"] == pytest.approx(float(want), rel=1e-5)
    _, p0 = crit(x=o, outputs=(clean, clean, o - clean), clean=clean, rainy_aug=aug, n_labeled=2)
    assert p0["c_bg"] == pytest.approx(0.0, abs=1e-6)


def test_semi_drdnet_unlabeled_terms_are_image_level():
    torch.manual_seed(0)
    feats = L.SelfFeatures()
    clean, o, x, aug, out, r = _mixed_batch()
    crit = L.Criterion("semi-drdnet", feats, terms="bg_u,rain_u")
    _, p = crit(x=x, outputs=(out, x - r, r), clean=clean, rainy_aug=aug, n_labeled=2)
    c = L.Contrast(feats)
    r_true = o - clean
    bg_u = c(out[2:], [clean], [x[2:], (out[2:] + r_true).clamp(0, 1)], aligned=False)
    rain_u = c(r[2:], [r_true], [out[2:], clean], aligned=False)
    assert p["c_bg_u"] == pytest.approx(float(bg_u), rel=1e-5)
    assert p["c_rain_u"] == pytest.approx(float(rain_u), rel=1e-5)


def test_patch_nce_is_low_at_its_positive_and_high_away():
    g = torch.Generator().manual_seed(0)
    q = [torch.nn.functional.normalize(torch.randn(2, 64, 8, 8, generator=g), dim=1)]
    low = float(L.patch_nce(q, q, [[-q[0]]], (1.0,), 0.07, 64, torch.Generator().manual_seed(1)))
    high = float(L.patch_nce(q, [-q[0]], [[q[0]]], (1.0,), 0.07, 64,
                             torch.Generator().manual_seed(1)))
    assert low < 0.05 and high > 10


def test_encoder_loss_contrasts_clean_against_every_rainy_input(monkeypatch):
    torch.manual_seed(0)
    feats = L.SelfFeatures()
    clean, o, x, aug, out, r = _mixed_batch()
    seen = {}
    real = L.patch_nce

    def spy(q, pos, negs, *a, **k):
        seen.update(q=q, pos=pos, negs=negs)
        return real(q, pos, negs, *a, **k)

    monkeypatch.setattr(L, "patch_nce", spy)
    crit = L.Criterion("semi-drdnet", feats, terms="bg")
    crit(x=o, outputs=(out[:2], out[:2], r[:2]), clean=clean, rainy_aug=aug, n_labeled=2)
    assert len(seen["negs"]) == 2
    with torch.no_grad():
        fo, fa = feats(o), feats(aug)
    assert torch.allclose(seen["negs"][0][0], fo[0]) and torch.allclose(seen["negs"][1][0], fa[0])


def test_vgg_contrast_is_the_ratio_form_even_unaligned():
    torch.manual_seed(0)
    c = L.Contrast(L.VGG19Features(SMALL_VGG))
    a, p, n = _smooth_batch(2, 32, 1), _smooth_batch(2, 32, 2), _smooth_batch(2, 32, 3)
    assert float(c(a, [p], [n], aligned=False)) == pytest.approx(float(c(a, [p], [n])), rel=1e-6)


def test_vgg_taps_normalisation_and_layer_weights():
    torch.manual_seed(0)
    widths = [4, 5, 6, 7, 8, 8, 8, 8, 9, 9, 9, 9, 10]
    net = L.VGG19Features(widths)
    x = torch.rand(1, 3, 32, 32)
    f = net(x)
    assert [t.shape[1] for t in f] == [4, 6, 8, 9, 10]  # relu1_1, 2_1, 3_1, 4_1, 5_1
    conv = net.features[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(f[0], torch.relu(conv((x - mean) / std)), atol=1e-6)
    assert net.layer_weights == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


def test_self_features_ignore_a_brightness_offset():
    torch.manual_seed(0)
    net = L.SelfFeatures()
    x = 0.2 + 0.5 * _smooth_batch(1, 32, 1)
    with torch.no_grad():
        a, b = net(x), net(x + 0.1)
    for u, v in zip(a, b, strict=True):
        assert torch.allclose(u, v, atol=1e-4)


def test_psnr_term_gives_its_gradient():
    b = _smooth_batch(2)
    x = (b + 0.1 * _smooth_batch(2, 32, 7)).clamp(0, 1)
    grads = []
    for w in (0.0, 0.01):
        out = x.clone().requires_grad_(True)
        loss, _ = L.Criterion("semi-drdnet", None, psnr_weight=w)(
            x=x, outputs=(out, x, torch.zeros_like(x)), clean=b)
        loss.backward()
        grads.append(out.grad.clone())
    out = x.clone().requires_grad_(True)
    (0.01 * L.psnr_loss(out, b)).backward()
    assert torch.allclose(grads[1] - grads[0], out.grad, atol=1e-7)
    assert float(out.grad.abs().sum()) > 0


def test_rdmc_prior_on_labeled_and_unlabeled_rows():
    torch.manual_seed(0)
    feats = L.VGG19Features(SMALL_VGG)
    clean, o, x, aug, out, r = _mixed_batch()
    _, p = L.Criterion("rdmc", feats)(x=x, outputs=(out, out), clean=clean, n_labeled=2)
    c = L.Contrast(feats)
    assert p["c_bg_u"] == pytest.approx(float(c(out[2:], [clean], [x[2:]], aligned=False)),
                                        rel=1e-5)
    assert p["c_bg"] == pytest.approx(float(c(out[:2], [clean], [o])), rel=1e-5)


def test_unlabeled_terms_weigh_half():
    torch.manual_seed(0)
    feats = L.VGG19Features(SMALL_VGG)
    clean, o, x, aug, out, r = _mixed_batch()
    loss, p = L.Criterion("rdmc", feats, contrast_weight=0.1)(x=x, outputs=(out, out),
                                                               clean=clean, n_labeled=2)
    assert float(loss) == pytest.approx(p["sup"] + 0.1 * (p["c_bg"] + 0.5 * p["c_bg_u"]), rel=1e-5)


def test_contrast_weight_zero_computes_no_terms():
    torch.manual_seed(0)
    clean, o, x, aug, out, r = _mixed_batch()
    loss, p = L.Criterion("semi-drdnet", L.SelfFeatures(), contrast_weight=0.0)(
        x=x, outputs=(out, x - r, r), clean=clean, rainy_aug=aug, n_labeled=2)
    assert set(p) == {"sup"}


def test_rain_branch_negatives():
    torch.manual_seed(0)
    feats = L.VGG19Features(SMALL_VGG)
    clean, o, x, aug, out, r = _mixed_batch()
    _, p = L.Criterion("semi-drdnet", feats, terms="rain")(
        x=o, outputs=(out[:2], out[:2], r[:2]), clean=clean, rainy_aug=aug, n_labeled=2)
    rt = o - clean
    want = L.Contrast(feats)(r[:2], [rt], [clean, (clean + rt) / 2, torch.roll(clean, 1, 0)])
    assert p["c_rain"] == pytest.approx(float(want), rel=1e-5)
