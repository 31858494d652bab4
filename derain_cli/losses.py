"""Training losses for Semi-DRDNet and RDMC (supervised parts; contrastive terms below).

Supervised
----------
* Semi-DRDNet: ``L1(out, B) + 0.2 * (1 - SSIM(out, B)) + 0.1 * [L1(O - R, B) + 0.2 * (1 -
  SSIM(O - R, B))]`` (the final output weighted 1, the first estimate ``O - R`` 0.1).
* RDMC: ``0.1 * MSE + (1 - SSIM)`` on every recursion stage's output, averaged over stages
  (intermediate stages are supervised too, as in recursive deraining nets: it speeds up
  training and costs nothing at inference).

SSIM here is the differentiable RGB SSIM (11x11 Gaussian window, sigma 1.5, per channel,
valid region), the training counterpart of ``metrics.ssim_y``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .fileio import sha256_file


def _gauss_window(size: int = 11, sigma: float = 1.5, device: torch.device | None = None,
                  dtype: torch.dtype | None = None) -> Tensor:
    # made in float64 on the CPU, then moved: Apple's MPS has no float64 (training's first
    # SSIM term raised there)
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g.to(device=device, dtype=dtype or torch.float32)


def ssim_torch(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean SSIM of two NxCxHxW batches (Gaussian 11x11 window, sigma 1.5, per channel)."""
    with torch.autocast(a.device.type, enabled=False):  # variances need fp32, not bf16
        return _ssim_fp32(a.float(), b.float(), data_range)


def _ssim_fp32(a: Tensor, b: Tensor, data_range: float) -> Tensor:
    c = a.shape[1]
    size = 11 if min(a.shape[-2:]) >= 11 else (min(a.shape[-2:]) // 2) * 2 + 1
    g = _gauss_window(size, 1.5, a.device, a.dtype)
    gx = g.view(1, 1, 1, -1).expand(c, 1, 1, size)
    gy = g.view(1, 1, -1, 1).expand(c, 1, size, 1)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, gx, groups=c), gy, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a**2
    sbb = blur(b * b) - mu_b**2
    sab = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)
    return (num / den).mean()


def l1_ssim(pred: Tensor, gt: Tensor, ssim_weight: float = 0.2) -> Tensor:
    loss = F.l1_loss(pred.float(), gt.float())
    if ssim_weight:
        loss = loss + ssim_weight * (1.0 - ssim_torch(pred, gt))
    return loss


def semi_drdnet_supervised(
    out: Tensor, coarse: Tensor, clean: Tensor, *, ssim_weight: float = 0.2,
    coarse_weight: float = 0.1,
) -> Tensor:
    """Semi-DRDNet's supervised loss on the output and the first estimate ``O - R``."""
    return l1_ssim(out, clean, ssim_weight) + coarse_weight * l1_ssim(coarse, clean, ssim_weight)


#: added to each crop's mean squared error in ``psnr_loss``: caps a crop at 50 dB, so that
#: rain-free, nearly perfect crops (mse ~1e-7) do not take over the gradient
PSNR_EPS = 1e-5


def psnr_loss(pred: Tensor, gt: Tensor, eps: float = PSNR_EPS) -> Tensor:
    """Minus each image's PSNR in dB (images in [0, 1]: ``10 log10(mse + eps)``), averaged
    over the batch.

    Not in either paper (NAFNet's "PSNR loss"): the evaluation averages PSNR per image, and
    a change of an image's squared error counts there in proportion to 1 / its error, so
    lightly rained, nearly clean images weigh more than under L1 or MSE over the batch's
    pixels."""
    mse = (pred.float() - gt.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(mse + eps).mean()


def consistency_loss(output: Tensor, reference: Tensor) -> Tensor:
    """Mean absolute difference between the model's output on unlabeled photos and the
    frozen starting model's (finetune's ``--consistency``). L1, not MSE: a streak the
    fine-tuning learns to remove is a large local change, which an L1 pull resists less than
    a squared one, while many small drifts across the photo still add up."""
    return (output.float() - reference.float()).abs().mean()


def rdmc_supervised(stages: list[Tensor], clean: Tensor, *, mse_weight: float = 0.1,
                    l1_weight: float = 0.0) -> Tensor:
    """RDMC's ``0.1 * MSE + (1 - SSIM)``, averaged over the recursion stages' outputs.

    ``l1_weight`` adds an L1 term (not in the paper): SSIM's luminance term hardly charges a
    uniform offset (8 levels darker on a flat mid-grey image cost 0.0022 in all) and the
    small MSE weight little more. Continuing the bundled rdmc-lite on additive rain, its
    output on rain100l drifted from 2.9 to 5.8 levels too dark under the paper's loss and
    stayed at 2.0 with ``l1_weight=1``, 1.65 dB better (README, "rdmc-lite on added rain";
    its collapse on heavy-small came from the 64 px crops, with or without the term)."""
    total = clean.new_zeros((), dtype=torch.float32)
    for s in stages:
        total = total + mse_weight * F.mse_loss(s.float(), clean.float()) + (
            1.0 - ssim_torch(s, clean)
        )
        if l1_weight:
            total = total + l1_weight * F.l1_loss(s.float(), clean.float())
    return total / len(stages)


# =========================================================================== contrastive
#
# Feature spaces
# --------------
# * ``vgg19``: ImageNet VGG19 (torchvision layout, weights from timm's ``vgg19.tv_in1k`` on the
#   Hugging Face Hub), features relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 with the layer
#   weights 1/32, 1/16, 1/8, 1/4, 1 of AECR-Net's contrastive regularisation (RDMC's own
#   layers and weights were not checked: its body was not read).
#   Contrast = RATIO form: ``sum_l w_l * d_l(a, P) / (d_l(a, N) + eps)`` where ``d_l(a, S)`` is
#   the mean over the samples s of S of the L1 distance between the features of a and s.
# * ``self``: no outside weights. A small conv encoder (3 stages, 16/32/64 channels, stride 2
#   between stages) on the image's detail layer (``x - blur(x)``, no colour or illumination)
#   with a 2-layer projection head per stage, trained jointly with the model
#   (its own optimizer group) by a PatchNCE objective that makes it rain-sensitive: a clean
#   patch's embedding must be closest to the same location of a slightly jittered copy of the
#   clean image and far from the same location of the rainy image(s) and from other
#   locations (CUT, Park et al. 2020). The model's contrast terms use that frozen (per step)
#   embedding in the same RATIO form as vgg19 (stage weights 1/3 each) when the positives
#   are pixel-aligned with the anchor. (An earlier version used PatchNCE for the model too;
#   its "other locations of the positive" negatives cannot be beaten in flat regions, so
#   the loss never reached its floor and pushed flat areas into blotches: measured worse
#   than no contrast, see benchmarks/contrast_ablation.py.) When the positives are not
#   aligned (unpaired clean photos for real rainy inputs) the embeddings are
#   global-average-pooled first (image-level InfoNCE, temperature 0.2).
#
# Dual sample-augmented contrastive regularisation (Semi-DRDNet); B = clean, O = rainy,
# R* = O - B (true rain layer), O' = B + other synthetic rain (``rainy_aug``), out/R the
# network's output and rain layer:
#   background branch, anchor out:  P = {B}          N = {O, O', clip(out.detach() + R*)}
#   rain branch,       anchor R:    P = {R*}         N = {B, roll(B) (other images' backgrounds
#                                                         in the batch), (B + R*) / 2 (mix)}
#     (O' - B, other rain on the same background, was a second positive until 2026-12-01: in
#     the pixel-aligned ratio form it pulls R toward streaks that are not where the rain is,
#     and fine-tuning without the whole rain branch scored better on all three evaluation
#     sets; see docs/contrastive-terms.md, "term by term".)
#   unlabeled real photos O_u (no ground truth), anchor out_u / R_u:
#       background:  P = {B of the labeled batch (unpaired clean)}
#                    N = {O_u, clip(out_u.detach() + R*) (re-rained output)}
#       rain:        P = {R* of the labeled batch (unpaired rain)}  N = {out_u.detach(), B}
#   The total contrastive term is ``contrast_weight * (bg + rain + 0.5 * (bg_u + rain_u))``
#   (``--contrast-terms`` keeps a subset, for ablations; two other forms of the rain branch,
#   ``rain_out`` and ``rain_leak``, run only when named: see ``ABLATION_TERMS``).
# RDMC's contrastive prior: anchor out (last stage), P = {B}, N = {O} (and for unlabeled
#   photos P = unpaired B, N = {O_u}), ``contrast_weight`` (0.1) times the term.
# Positives and negatives never receive gradients.
# ===========================================================================

log = logging.getLogger(__name__)

VGG19_REPO = "timm/vgg19.tv_in1k"
VGG19_FILE = "model.safetensors"
VGG19_REVISION = "main"
#: sha256 of timm's file; not pinned yet (unknown when this was written): the download is then
#: checked structurally only (tensor names and shapes) and its sha256 is logged so it can be
#: pinned here. See ``load_vgg19``.
VGG19_SHA256: str | None = None

# conv layers of VGG19's ``features`` (torchvision/timm indices) up to relu5_1
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512]
_VGG_TAPS = (1, 6, 11, 20, 29)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
_VGG_CONV_IDX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)
_VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


class ContrastUnavailable(RuntimeError):
    """The requested contrastive feature space cannot be set up (message says why)."""


class VGG19Features(nn.Module):
    """VGG19 ``features`` up to relu5_1, frozen, ImageNet-normalised input in [0, 1].

    ``widths`` are the 13 conv output widths (VGG19's by default); ``from_timm_state`` infers
    them from a file, so a test can serve a small fake with the same names and layout.
    """

    kind = "vgg19"
    trainable = False

    def __init__(self, widths: Sequence[int] | None = None) -> None:
        super().__init__()
        widths = list(widths) if widths is not None else [v for v in _VGG19_CFG if v != "M"]
        if len(widths) != len(_VGG_CONV_IDX):
            raise ValueError(f"VGG19 up to relu5_1 has {len(_VGG_CONV_IDX)} convs")
        layers: list[nn.Module] = []
        cin, k = 3, 0
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(widths[k]), 3, padding=1), nn.ReLU(inplace=False)]
                cin, k = int(widths[k]), k + 1
        self.features = nn.Sequential(*layers[: _VGG_TAPS[-1] + 1])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
                             persistent=False)
        self.layer_weights = _VGG_WEIGHTS
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:  # always frozen
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        h = (x.float() - self.mean) / self.std
        feats = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _VGG_TAPS:
                feats.append(h)
        return feats

    @classmethod
    def from_timm_state(cls, state: dict[str, Tensor]) -> VGG19Features:
        """Build from timm's ``vgg19.tv_in1k`` tensors (``features.N.weight``/``.bias``; the
        classifier tensors are ignored), checking the VGG19 layout."""
        widths = []
        for i in _VGG_CONV_IDX:
            w = state.get(f"features.{i}.weight")
            if w is None or w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
                raise ContrastUnavailable(
                    f"VGG19 weights: tensor 'features.{i}.weight' missing or not a 3x3 conv")
            widths.append(int(w.shape[0]))
        net = cls(widths)
        own = net.state_dict()
        for k, v in own.items():
            if k not in state:
                raise ContrastUnavailable(f"VGG19 weights: tensor {k!r} missing")
            if tuple(state[k].shape) != tuple(v.shape):
                raise ContrastUnavailable(
                    f"VGG19 weights: {k!r} has shape {tuple(state[k].shape)}, "
                    f"expected {tuple(v.shape)}")
        net.load_state_dict({k: state[k].float() for k in own})
        return net


def _vgg_cached_path(repo_id: str, filename: str, revision: str,
                     cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    import huggingface_hub

    try:
        found = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision,
                                                       cache_dir=cache_dir)
    except (OSError, ValueError):
        return None
    return Path(found) if isinstance(found, str) else None


def vgg19_cached(repo_id: str = VGG19_REPO, filename: str = VGG19_FILE,
                 revision: str = VGG19_REVISION,
                 cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when the VGG19 weights are already in the local Hugging Face cache."""
    return _vgg_cached_path(repo_id, filename, revision, cache_dir) is not None


def load_vgg19(
    repo_id: str = VGG19_REPO, filename: str = VGG19_FILE, revision: str = VGG19_REVISION,
    sha256: str | None = VGG19_SHA256, *, quiet: bool = True,
    endpoint: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
) -> VGG19Features:
    """VGG19 features with timm's ImageNet weights, fetched through the Hub (or its cache).

    With a pinned ``sha256`` the file goes through ``hub.fetch`` (checksum-verified). Without
    one (timm's checksum is not pinned yet) it is fetched with ``hf_hub_download`` and checked
    structurally only (every tensor name and shape must fit VGG19); its sha256 is logged.
    """
    from safetensors.torch import load_file

    from . import hub

    if sha256 is not None:
        try:
            path = hub.fetch(repo_id, filename, revision, sha256, quiet=quiet, name="vgg19",
                             endpoint=endpoint,
                             cache_dir=Path(cache_dir) if cache_dir is not None else None)
        except hub.WeightsUnavailable as e:
            raise ContrastUnavailable(str(e)) from None
    else:
        path = _vgg_cached_path(repo_id, filename, revision, cache_dir)
        if path is None:
            import huggingface_hub

            try:  # one HEAD first (hub.file_metadata: retried only on 429/5xx): offline,
                hub.file_metadata(  # hf_hub_download retried ~25 s, raw resolver lines (audit)
                    huggingface_hub.hf_hub_url(repo_id, filename, revision=revision,
                                               endpoint=endpoint), endpoint=endpoint)
                path = Path(huggingface_hub.hf_hub_download(
                    repo_id, filename, revision=revision, endpoint=endpoint,
                    cache_dir=cache_dir))
            except Exception as e:  # noqa: BLE001 - any Hub failure means "unavailable"
                raise ContrastUnavailable(
                    f"cannot download VGG19 weights {repo_id}/{filename}: "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                    "use --contrast-features self (no download needed)") from None
        h = sha256_file(path)  # in chunks: the file is about 550 MB
        log.info("VGG19 weights %s (sha256 %s, not pinned: checked by names/shapes)", path, h)
    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise ContrastUnavailable(f"{path}: unreadable VGG19 weights ({e})") from None
    return VGG19Features.from_timm_state(state)


#: Gaussian of the self features' detail layer (streaks are 1-3 px wide: they stay in it)
DETAIL_BLUR, DETAIL_SIGMA = 13, 2.0
#: The self-feature encoder's own learning rate, whatever the model's: with fine-tuning's
#: 2e-5 its PatchNCE loss stayed at chance (4.1, ln 65) for all 200 steps, so the
#: contrastive terms compared outputs in a random feature space. At 1e-3 the loss falls
#: from 4.1 to 1.4 in 50 steps and 0.45 in 200 (batch 4 of 96 px synthetic pairs).
SELF_FEATURES_LR = 1e-3
#: Steps over which the contrastive terms' weight ramps up from 0 while a freshly built
#: self encoder learns (the model never follows a random feature space)
SELF_FEATURES_RAMP = 50


def _detail_kernel(device: torch.device | None = None) -> Tensor:
    g = _gauss_window(DETAIL_BLUR, DETAIL_SIGMA, device=device)
    return (g[:, None] * g[None, :]).expand(3, 1, -1, -1).clone()


def detail_layer(x: Tensor, kernel: Tensor | None = None) -> Tensor:
    """``x - blur(x)`` (Gaussian, ``DETAIL_SIGMA``; replicate padding) of an N x 3 x H x W
    batch: the edges and texture, where rain streaks live, without colour or light."""
    k = _detail_kernel(x.device) if kernel is None else kernel
    p = DETAIL_BLUR // 2
    xp = F.pad(x, (p, p, p, p), mode="replicate")
    return x - F.conv2d(xp, k.to(x.dtype), groups=3)


class SelfFeatures(nn.Module):
    """Small learned encoder + projection heads (PatchNCE-trained; see the section comment).

    The encoder sees only the detail layer ``x - blur(x)`` (Gaussian, sigma 2), where rain
    streaks live. Colour and illumination are left to the supervised loss: the unpaired
    real-photo terms compare pooled embeddings of unrelated photos, and on raw RGB that pull
    was a pull toward other photos' colours (a colour cast, measured with
    ``benchmarks/contrast_ablation.py``).
    """

    kind = "self"
    trainable = True

    def __init__(self, widths: Sequence[int] = (16, 32, 64), proj: int = 64,
                 tau: float = 0.07, n_patches: int = 64) -> None:
        super().__init__()
        self.tau, self.n_patches = tau, n_patches
        stages = []
        cin = 3
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(
                nn.Conv2d(cin, w, 3, stride=stride, padding=1), nn.LeakyReLU(0.2),
                nn.Conv2d(w, w, 3, padding=1), nn.LeakyReLU(0.2)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w, proj, 1), nn.ReLU(), nn.Conv2d(proj, proj, 1))
            for w in widths)
        self.layer_weights = tuple(1.0 / len(widths) for _ in widths)
        self.register_buffer("blur", _detail_kernel(), persistent=False)

    def detail(self, x: Tensor) -> Tensor:
        """``x - blur(x)``, scaled to about unit range for a 0..1 image."""
        return 4.0 * detail_layer(x, self.blur)

    def forward(self, x: Tensor) -> list[Tensor]:
        """L2-normalised projected embeddings per stage (N x proj x H_l x W_l)."""
        h = self.detail(x.float())
        out = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            h = stage(h)
            out.append(F.normalize(head(h), dim=1))
        return out

    # -- the encoder's own objective (inputs detached; only the encoder learns from it)
    def encoder_loss(self, clean: Tensor, rainy: Sequence[Tensor], gen: torch.Generator) -> Tensor:
        clean = clean.detach().float()
        noise = torch.randn(clean.shape, generator=gen, device="cpu").to(clean.device)
        gain = 1 + 0.1 * (torch.rand((clean.shape[0], 1, 1, 1), generator=gen) - 0.5)
        jitter = (clean * gain.to(clean.device) + 0.02 * noise).clamp(0, 1)
        return patch_nce(self(clean), self(jitter), [self(r.detach().float()) for r in rainy],
                         self.layer_weights, self.tau, self.n_patches, gen)


def _sample_idx(h: int, w: int, n: int, gen: torch.Generator | None,
                device: torch.device) -> Tensor:
    k = min(n, h * w)
    idx = torch.randperm(h * w, generator=gen)[:k] if gen is not None else \
        torch.randperm(h * w)[:k]
    return idx.to(device)


def patch_nce(
    q_feats: list[Tensor], pos_feats: list[Tensor], neg_feats: list[list[Tensor]],
    weights: Sequence[float], tau: float = 0.07, n_patches: int = 64,
    gen: torch.Generator | None = None,
) -> Tensor:
    """PatchNCE: per location, the positive's same location vs negatives' same location and
    the positive's other locations. Embeddings must be L2-normalised along channels."""
    with torch.autocast(q_feats[0].device.type, enabled=False):
        return _patch_nce_fp32([q.float() for q in q_feats], [k.float() for k in pos_feats],
                               [[f.float() for f in nf] for nf in neg_feats], weights, tau,
                               n_patches, gen)


def _patch_nce_fp32(
    q_feats: list[Tensor], pos_feats: list[Tensor], neg_feats: list[list[Tensor]],
    weights: Sequence[float], tau: float, n_patches: int, gen: torch.Generator | None,
) -> Tensor:
    total = q_feats[0].new_zeros((), dtype=torch.float32)
    for li, (q, k) in enumerate(zip(q_feats, pos_feats, strict=True)):
        n, c, h, w = q.shape
        idx = _sample_idx(h, w, n_patches, gen, q.device)
        qs = q.flatten(2)[:, :, idx].transpose(1, 2)  # N x P x C
        ks = k.flatten(2)[:, :, idx].transpose(1, 2)
        # positive logits + "other patches of the positive" as negatives
        logits = torch.bmm(qs, ks.transpose(1, 2)) / tau  # N x P x P, diagonal = positives
        extra = [
            (qs * nf[li].flatten(2)[:, :, idx].transpose(1, 2)).sum(-1, keepdim=True) / tau
            for nf in neg_feats
        ]
        pos = logits.diagonal(dim1=1, dim2=2).unsqueeze(-1)
        eye = torch.eye(logits.shape[1], device=q.device, dtype=torch.bool)
        others = logits.masked_fill(eye, float("-inf"))
        full = torch.cat([pos, others, *extra], dim=-1)
        total = total + weights[li] * F.cross_entropy(
            full.flatten(0, 1), torch.zeros(full.shape[0] * full.shape[1], dtype=torch.long,
                                            device=q.device))
    return total / sum(weights)


def global_nce(
    q_feats: list[Tensor], pos_feats: list[list[Tensor]], neg_feats: list[list[Tensor]],
    weights: Sequence[float], tau: float = 0.07,
) -> Tensor:
    """Image-level InfoNCE on pooled embeddings (for positives not aligned with the anchor):
    per anchor, each positive vs all negatives of that anchor."""
    with torch.autocast(q_feats[0].device.type, enabled=False):
        return _global_nce_fp32([q.float() for q in q_feats],
                                [[f.float() for f in pf] for pf in pos_feats],
                                [[f.float() for f in nf] for nf in neg_feats], weights, tau)


def _global_nce_fp32(
    q_feats: list[Tensor], pos_feats: list[list[Tensor]], neg_feats: list[list[Tensor]],
    weights: Sequence[float], tau: float,
) -> Tensor:
    total = q_feats[0].new_zeros((), dtype=torch.float32)
    for li, q in enumerate(q_feats):
        qv = F.normalize(q.mean((2, 3)), dim=1)
        negs = torch.stack([F.normalize(nf[li].mean((2, 3)), dim=1) for nf in neg_feats], 1)
        nl = (qv.unsqueeze(1) * negs).sum(-1) / tau  # N x n_neg
        lsum = 0.0
        for pf in pos_feats:
            pv = F.normalize(pf[li].mean((2, 3)), dim=1)
            pl = (qv * pv).sum(-1, keepdim=True) / tau
            lsum = lsum - F.log_softmax(torch.cat([pl, nl], 1), 1)[:, 0].mean()
        total = total + weights[li] * lsum / len(pos_feats)
    return total / sum(weights)


def ratio_contrast(
    a_feats: list[Tensor], pos_feats: list[list[Tensor]], neg_feats: list[list[Tensor]],
    weights: Sequence[float], eps: float = 1e-7,
) -> Tensor:
    """``sum_l w_l * mean_p L1(a, p) / (mean_n L1(a, n) + eps)`` (contrastive regularisation)."""
    total = a_feats[0].new_zeros((), dtype=torch.float32)
    for li, a in enumerate(a_feats):
        a = a.float()
        dp = sum(F.l1_loss(a, pf[li].float()) for pf in pos_feats) / len(pos_feats)
        dn = sum(F.l1_loss(a, nf[li].float()) for nf in neg_feats) / len(neg_feats)
        total = total + weights[li] * dp / (dn + eps)
    return total


#: temperature of the image-level InfoNCE (unpaired positives): milder than PatchNCE's 0.07,
#: since pooled embeddings of unrelated images are far apart anyway
GLOBAL_TAU = 0.2
#: weight of the unlabeled-photo terms relative to the labeled ones (their positives are
#: unpaired, so their gradient is a style pull, not a content target)
UNLABELED_FACTOR = 0.5
#: the contrastive terms each architecture has (``Criterion(terms=...)``,
#: ``--contrast-terms``): background / rain-layer branches on the labeled pairs, and the
#: same on the unlabeled photos (``_u``); RDMC's prior has the background branch only
CONTRAST_TERMS = {"semi-drdnet": ("bg", "rain", "bg_u", "rain_u"), "rdmc": ("bg", "bg_u")}
#: other forms of Semi-DRDNet's labeled rain branch, for ablations only (named, never in
#: "all"): ``rain_out`` anchors it on the final output's rain layer ``O - out`` instead of
#: the rain network's ``R``; ``rain_leak`` keeps ``R`` and takes as negatives ``B`` and
#: ``R* + detail(B)`` (rain that took the background's edges with it) instead of ``B``,
#: ``roll(B)`` and the mix. Measured on 2026-12-04, neither helped (docs/contrastive-terms.md)
ABLATION_TERMS = {"semi-drdnet": ("rain_out", "rain_leak"), "rdmc": ()}
#: the terms ``derain finetune`` uses unless told: the two background branches. Semi-DRDNet's
#: labeled rain branch cost heavy-small 0.15-0.16 dB at consistency 0.1 (off since
#: 2026-12-01); its unlabeled rain branch, at consistency 1.0, cost rain100l 0.08-0.09 dB in
#: two seeds with --clean and 0.71 dB with pseudo-clean backgrounds, while the other two
#: terms help (off since 2026-12-03; docs/contrastive-terms.md, README "Fine-tuning stays
#: near its start")
FINETUNE_CONTRAST_TERMS = {"semi-drdnet": ("bg", "bg_u"), "rdmc": ("bg", "bg_u")}


def parse_contrast_terms(arch: str, spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """The terms named in ``spec`` ("bg,rain", a sequence, or None/"all" for every term of
    ``arch``), validated, so an ablation of one term is a flag, not a code change."""
    if spec is None or spec == "all":
        return CONTRAST_TERMS[arch]
    known = CONTRAST_TERMS[arch] + ABLATION_TERMS[arch]
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [t for t in names if t]
    bad = [t for t in names if t not in known]
    if bad or not names:
        raise ValueError(f"contrast terms {', '.join(bad) or '(none)'} not known for {arch}; "
                         f"choose from {', '.join(known)} (or all)")
    return tuple(t for t in known if t in names)


class Contrast:
    """``contrast(anchor, positives, negatives, aligned)`` in one feature space.

    Ratio form (distance to the positives over distance to the negatives, 0 when the anchor
    equals its positive) whenever the positives are pixel-aligned with the anchor; for self
    features with unaligned positives, image-level InfoNCE on pooled embeddings. The feature
    network's parameters never get gradients from this (they are used detached); only the
    anchor does.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def _feats_const(self, xs: Sequence[Tensor]) -> list[list[Tensor]]:
        with torch.no_grad():
            f = self.net(torch.cat([x.detach().float() for x in xs]))
        n = xs[0].shape[0]
        return [[fl[i * n:(i + 1) * n] for fl in f] for i in range(len(xs))]

    def _feats_anchor(self, x: Tensor) -> list[Tensor]:
        if self.net.trainable:
            params = {k: v.detach() for k, v in self.net.named_parameters()}
            params.update(dict(self.net.named_buffers()))
            return functional_call(self.net, params, (x.float(),))
        return self.net(x.float())

    def __call__(self, anchor: Tensor, positives: Sequence[Tensor],
                 negatives: Sequence[Tensor], aligned: bool = True) -> Tensor:
        a = self._feats_anchor(anchor)
        consts = self._feats_const([*positives, *negatives])
        pos, neg = consts[: len(positives)], consts[len(positives):]
        w = self.net.layer_weights
        if self.net.kind == "vgg19" or aligned:
            return ratio_contrast(a, pos, neg, w)
        return global_nce(a, pos, neg, w, GLOBAL_TAU)


def build_features(kind: str, *, quiet: bool = True, seed: int = 0) -> tuple[nn.Module, str]:
    """The feature network for ``--contrast-features`` and a label saying what was chosen."""
    if kind == "auto":
        if vgg19_cached():
            try:
                return load_vgg19(quiet=quiet), "vgg19 (auto: found in the local HF cache)"
            except ContrastUnavailable as e:
                log.warning("cached VGG19 unusable (%s); using self features", e)
        torch.manual_seed(seed)
        return SelfFeatures(), "self (auto: no VGG19 weights in the local HF cache)"
    if kind == "vgg19":
        return load_vgg19(quiet=quiet), "vgg19"
    if kind == "self":
        torch.manual_seed(seed)
        return SelfFeatures(), "self"
    raise ValueError(f"unknown contrast features {kind!r}; use auto, vgg19, self or none")


class Criterion(nn.Module):
    """Supervised + contrastive training loss for one architecture (see module comments).

    ``forward(x, outputs, clean, rainy_aug, n_labeled, rain_free)``: ``x`` is the network
    input (labeled rows first, then unlabeled), ``outputs`` what ``train._Wrapper`` returns,
    ``rain_free`` marks labeled rows without rain (supervised loss only). Returns the loss
    and a dict of floats for logging.
    """

    def __init__(self, arch: str, features: nn.Module | None = None, *,
                 contrast_weight: float = 0.1, ssim_weight: float = 0.2,
                 seed: int = 0, terms: str | Sequence[str] | None = None,
                 l1_weight: float = 0.0, psnr_weight: float = 0.0) -> None:
        super().__init__()
        self.arch = arch
        #: contrastive terms computed (the others are skipped, not just zero-weighted)
        self.terms = parse_contrast_terms(arch, terms)
        self.features = features
        self.contrast_weight = contrast_weight
        self.ssim_weight = ssim_weight
        self.l1_weight = l1_weight  # RDMC only (``rdmc_supervised``)
        #: weight of ``psnr_loss`` on the final output, added to the supervised loss
        self.psnr_weight = psnr_weight
        self.contrast = Contrast(features) if features is not None else None
        self._gen = torch.Generator().manual_seed(seed + 1)
        #: share of ``contrast_weight`` applied this step (``ramp``); the encoder's own
        #: objective is always on
        self.contrast_scale = 1.0

    def ramp(self, step: int, steps: int = SELF_FEATURES_RAMP) -> None:
        """Scale the contrastive terms by ``step / steps`` (at most 1) when the feature
        network learns during training: it starts random (see ``SELF_FEATURES_RAMP``)."""
        trainable = self.features is not None and getattr(self.features, "trainable", False)
        self.contrast_scale = min(1.0, step / steps) if trainable and steps > 0 else 1.0

    def aux_parameters(self) -> list[nn.Parameter]:
        if self.features is not None and getattr(self.features, "trainable", False):
            return list(self.features.parameters())
        return []

    def aux_state(self) -> dict[str, Any]:
        if not self.aux_parameters():
            return {}
        return {"features": self.features.state_dict(), "gen": self._gen.get_state()}

    def rng_state(self) -> Tensor:
        """The state of the generator the contrastive sampling draws from (for snapshots:
        ``aux_state`` takes the live one)."""
        return self._gen.get_state()

    def load_aux_state(self, state: dict[str, Any]) -> None:
        if state and self.aux_parameters():
            self.features.load_state_dict(state["features"])
            self._gen.set_state(state["gen"])

    def forward(self, *, x: Tensor, outputs: Sequence[Tensor], clean: Tensor,
                rainy_aug: Tensor | None = None, n_labeled: int | None = None,
                rain_free: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        nl = n_labeled if n_labeled is not None else clean.shape[0]
        parts: dict[str, float] = {}
        if self.arch == "semi-drdnet":
            out, coarse, rain = outputs[0], outputs[1], outputs[2]
            sup = semi_drdnet_supervised(out[:nl], coarse[:nl], clean,
                                         ssim_weight=self.ssim_weight)
        else:
            out, rain = outputs[-1], None
            sup = rdmc_supervised([s[:nl] for s in outputs], clean, l1_weight=self.l1_weight)
        if self.psnr_weight:
            neg_psnr = psnr_loss(out[:nl], clean)
            parts["psnr"] = -float(neg_psnr.detach())
            sup = sup + self.psnr_weight * neg_psnr
        loss = sup
        parts["sup"] = float(sup.detach())
        if self.contrast is None or self.contrast_weight <= 0:
            return loss, parts

        # Rain-free items (``data.LabeledDataset(clean_fraction=...)``) have no rain layer and
        # their rainy negative equals the positive: they get the supervised loss only.
        lab = torch.arange(nl, device=x.device)
        if rain_free is not None:
            lab = lab[~rain_free[:nl].to(x.device)]
        if lab.numel() == 0:
            return loss, parts
        c = self.contrast
        o_l, b = x[lab].float(), clean[lab].float()
        out_l = out[lab]
        aug_l = rainy_aug[lab] if rainy_aug is not None else None
        r_true = o_l - b
        nc, nu = lab.numel(), x.shape[0] - nl
        terms: dict[str, Tensor] = {}
        on = set(self.terms)
        if self.arch == "semi-drdnet":
            if "bg" in on:
                negs = [o_l] + ([aug_l] if aug_l is not None else [])
                negs.append((out_l.detach().float() + r_true).clamp(0, 1))
                terms["c_bg"] = c(out_l, [b], negs)
            if on & {"rain", "rain_out"}:
                rnegs = [b, (b + r_true) / 2]
                if nc > 1:
                    rnegs.append(torch.roll(b, 1, 0))
                if "rain" in on:
                    terms["c_rain"] = c(rain[lab], [r_true], rnegs)
                if "rain_out" in on:
                    terms["c_rain_out"] = c(o_l - out_l.float(), [r_true], rnegs)
            if "rain_leak" in on:
                terms["c_rain_leak"] = c(rain[lab], [r_true], [b, r_true + detail_layer(b)])
            if nu > 0:
                pick = torch.arange(nu, device=x.device) % nc
                o_u, out_u, rain_u = x[nl:].float(), out[nl:], rain[nl:]
                b_un, r_un = b[pick], r_true[pick]
                if "bg_u" in on:
                    terms["c_bg_u"] = c(out_u, [b_un], [o_u, (out_u.detach().float() + r_un)
                                                        .clamp(0, 1)], aligned=False)
                if "rain_u" in on:
                    terms["c_rain_u"] = c(rain_u, [r_un], [out_u.detach().float(), b_un],
                                          aligned=False)
        else:
            if "bg" in on:
                terms["c_bg"] = c(out_l, [b], [o_l])
            if nu > 0 and "bg_u" in on:
                pick = torch.arange(nu, device=x.device) % nc
                terms["c_bg_u"] = c(out[nl:], [b[pick]], [x[nl:].float()], aligned=False)
        cterm = sum((v * (UNLABELED_FACTOR if k.endswith("_u") else 1.0)
                     for k, v in terms.items()), torch.zeros((), device=x.device))
        loss = loss + self.contrast_weight * self.contrast_scale * cterm
        parts.update({k: float(v.detach()) for k, v in terms.items()})
        if isinstance(self.features, SelfFeatures):
            rainy = [o_l] + ([aug_l] if aug_l is not None else [])
            enc = self.features.encoder_loss(b, rainy, self._gen)
            loss = loss + enc  # only the encoder's parameters receive this gradient
            parts["enc"] = float(enc.detach())
        return loss, parts
