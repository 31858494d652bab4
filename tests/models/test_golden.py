"""The bundled networks' output on one fixed input, pinned.

Why: shapes, parameter counts and folded-against-unfolded checks all pass when a forward
pass changes in a way that keeps them (a skip connection dropped, a pooling swapped, the
squeeze-and-excitation ReLU gone): a mutation audit found five such changes passing every
test while the bundled weights gave another image (up to 36 dB away). New weights change
these figures: the failure prints the new ones to paste below.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from derain_cli.weights import load_manifest, load_pretrained

#: name -> (sha256 prefix of the weights, output mean, output std, 12 sampled values)
GOLDEN = {
    "semi-drdnet-lite": ("e64b5ec213f1", 0.445739, 0.187902, [
        0.77022, 0.72241, 0.48707, 0.21783, 0.41506, 0.77577, 0.46979, 0.15537, 0.47702,
        0.70175, 0.46911, 0.19274]),
    "semi-drdnet-fast": ("aa4402f96b98", 0.449745, 0.188627, [
        0.76994, 0.72516, 0.48781, 0.21755, 0.41432, 0.78025, 0.47487, 0.16067, 0.47597,
        0.70629, 0.47289, 0.19762]),
    "semi-drdnet-tiny": ("894d456c64b6", 0.474938, 0.185231, [
        0.80869, 0.72552, 0.49311, 0.25878, 0.46632, 0.80692, 0.4873, 0.17979, 0.51293,
        0.7397, 0.49376, 0.21707]),
    "rdmc-lite": ("ac480f1a11ff", 0.468936, 0.186519, [
        0.80038, 0.71259, 0.48624, 0.21776, 0.43523, 0.8077, 0.49312, 0.18877, 0.47877,
        0.74413, 0.5102, 0.22307]),
}


def _input() -> torch.Tensor:
    """48x64 px: smooth colour ramps, diagonal bright streaks and a little noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64] / 64.0
    base = np.stack([0.5 + 0.3 * np.sin(6 * x), 0.4 + 0.3 * y, 0.3 + 0.4 * x * y])
    streak = ((np.arange(64)[None, :] + 2 * np.arange(48)[:, None]) % 9 == 0) * 0.35
    img = np.clip(base + streak + 0.03 * rng.standard_normal(base.shape), 0, 1)
    return torch.from_numpy(img.astype(np.float32))[None]


def test_every_bundled_model_is_pinned() -> None:
    assert sorted(GOLDEN) == sorted(load_manifest())


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_bundled_output_on_a_fixed_input(name: str) -> None:
    sha, mean, std, samples = GOLDEN[name]
    rec = load_manifest()[name]
    with torch.no_grad():
        out = load_pretrained(name).eval()(_input())[0].double().numpy()
    got = (round(float(out.mean()), 6), round(float(out.std()), 6),
           [round(float(v), 5) for v in out[:, ::16, ::16].ravel()[:12]])
    assert rec.sha256.startswith(sha), (
        f"{name}'s weights changed: put {rec.sha256[:12]!r}, {got[0]}, {got[1]}, {got[2]} "
        "in GOLDEN")
    assert got[0] == pytest.approx(mean, abs=2e-5) and got[1] == pytest.approx(std, abs=2e-5)
    assert got[2] == pytest.approx(samples, abs=2e-4), (name, got)
