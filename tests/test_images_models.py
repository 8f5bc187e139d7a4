"""The networks: DCGAN shapes and layout for 32 and 64 pixels, PyTorch's reference sizes, N(0, 0.02) init,
spectral norm, the dense baseline; and the synthetic galaxies they learn from."""

import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.integrate import quad
from scipy.stats import spearmanr

from specae.errors import SpecaeError
from specae.images.metrics import morphology
from specae.images.models import NetConfig, build_discriminator, build_generator
from specae.images.objective import GANConfig
from specae.images.synthetic import LABELS, galaxies, moffat_psf, sersic

pytestmark = pytest.mark.usefixtures("one_thread")


def count(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


@pytest.mark.parametrize("size, stages", [(32, 3), (64, 4)])
def test_dcgan_shapes_and_layout(size, stages):
    cfg = NetConfig(size=size, channels=3, width=8)
    g, d = build_generator(cfg), build_discriminator(cfg)
    x = g(torch.randn(5, 100))
    assert x.shape == (5, 3, size, size) and x.abs().max() < 1         # tanh range
    assert d(x).shape == (5,)
    assert count(g, nn.ConvTranspose2d) == stages + 1 and count(g, nn.BatchNorm2d) == stages
    assert count(d, nn.Conv2d) == stages + 1 and count(d, nn.BatchNorm2d) == stages - 1
    assert isinstance(d.net[1], nn.LeakyReLU) and d.net[1].negative_slope == 0.2   # no batch norm on the input layer
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    strides = [m.stride for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert strides == [(2, 2)] * stages + [(1, 1)]
    assert g.convs[0].out_channels == 8 * 2 ** (stages - 1)           # widths double towards the 4x4 map


def test_reference_dcgan_parameter_counts_and_init():
    # PyTorch's DCGAN example (nc=3, nz=100, ngf=ndf=64, 64x64): 3,576,704 and 2,765,568 parameters
    cfg = NetConfig(size=64, channels=3, latent=100, width=64)
    torch.manual_seed(0)
    g, d = build_generator(cfg), build_discriminator(cfg)
    assert sum(p.numel() for p in g.parameters()) == 3_576_704
    assert sum(p.numel() for p in d.parameters()) == 2_765_568
    for net in (g, d):
        convs = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
        scales = torch.cat([m.weight for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
        assert abs(convs.std().item() - 0.02) < 0.0005 and abs(convs.mean().item()) < 0.0005
        assert abs(scales.mean().item() - 1) < 0.005 and abs(scales.std().item() - 0.02) < 0.005


def test_spectral_norm_discriminator_has_unit_spectral_norms_and_no_batch_norm():
    cfg = NetConfig(size=32, width=8, spectral_norm=True)
    d = build_discriminator(cfg)
    assert count(d, nn.BatchNorm2d) == 0
    x = torch.randn(4, 1, 32, 32)
    for _ in range(30):                                              # power iterations happen in training forwards
        d(x)
    for m in d.modules():
        if isinstance(m, nn.Conv2d):
            sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
            assert abs(sigma.item() - 1) < 0.05
    dense = build_discriminator(NetConfig(size=32, width=8, dense=True, spectral_norm=True))
    assert dense(x).shape == (4,)


def test_dense_gan_shapes():
    cfg = NetConfig(size=32, channels=2, width=4, dense=True)
    g, d = build_generator(cfg), build_discriminator(cfg)
    x = g(torch.randn(3, 100))
    assert x.shape == (3, 2, 32, 32) and d(x).shape == (3,)
    assert count(g, nn.Conv2d) + count(g, nn.ConvTranspose2d) == 0 and count(g, nn.Linear) == 4


@pytest.mark.parametrize("dense", [False, True])
def test_noise_inputs_start_silent_and_draw_from_the_given_generator(dense):
    plain, noisy = NetConfig(size=32, width=4, dense=dense), NetConfig(size=32, width=4, dense=dense, noise=True)
    torch.manual_seed(0)
    g0 = build_generator(plain).eval()
    torch.manual_seed(0)
    g1 = build_generator(noisy).eval()
    z = torch.randn(3, 100)
    torch.testing.assert_close(g1(z, torch.Generator().manual_seed(1)), g0(z))   # scales start at 0
    scales = [m.scale for m in g1.modules() if m.__class__.__name__ == "NoiseInput"]
    assert len(scales) == (1 if dense else 4)
    with torch.no_grad():
        for s in scales:
            s.fill_(0.5)
    a, b = g1(z, torch.Generator().manual_seed(1)), g1(z, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, g1(z, torch.Generator().manual_seed(2)))


def test_config_errors():
    with pytest.raises(ValueError, match="power of two"):
        NetConfig(size=48)
    with pytest.raises(SpecaeError, match="power of two"):
        GANConfig(size=40).net(1)
    with pytest.raises(SpecaeError, match="unknown GAN loss"):
        GANConfig(loss="wasserstein").check()
    with pytest.raises(SpecaeError, match="unknown DiffAugment"):
        GANConfig(diffaug=("color",)).check()


# -- synthetic galaxies ----------------------------------------------------------------------------
def test_sersic_r_eff_holds_half_the_light_and_moffat_has_its_fwhm():
    for n in (1.0, 2.5, 4.0):
        inner = quad(lambda r: sersic(np.array(r), 2.0, np.array(n)) * r, 0, 2.0)[0]
        total = quad(lambda r: sersic(np.array(r), 2.0, np.array(n)) * r, 0, np.inf, limit=200)[0]
        assert abs(inner / total - 0.5) < 1e-4
    k = moffat_psf(3.0)
    c = k.shape[0] // 2
    assert np.isclose(k.sum(), 1) and np.isclose(np.interp(1.5, [1, 2], [k[c, c + 1], k[c, c + 2]]) / k[c, c], 0.5, atol=0.03)


def test_galaxies_are_fast_and_their_labels_match_measured_properties():
    t = time.perf_counter()
    g = galaxies(2000, size=32, seed=4)
    assert time.perf_counter() - t < 10
    assert g.pixels.shape == (2000, 1, 32, 32) and g.pixels.dtype == np.float32
    assert list(g.labels) == list(LABELS) and all(v.shape == (2000,) for v in g.labels.values())
    m = morphology(g.pixels)
    assert abs(np.median(m["flux"] / g.labels["flux"]) - 1) < 0.01    # the noise has zero mean
    assert np.corrcoef(m["flux"], g.labels["flux"])[0, 1] > 0.99
    assert spearmanr(m["r50"], g.labels["r_eff"])[0] > 0.8
    assert spearmanr(m["ellipticity"], g.labels["ellipticity"])[0] > 0.7
    bright = g.labels["flux"] > 2e4
    weights = np.clip(g.pixels[bright, 0], 0, None)
    cx = (weights * np.arange(32)).sum(axis=(1, 2)) / weights.sum(axis=(1, 2))
    assert np.median(np.abs(cx - g.labels["x0"][bright])) < 0.3        # x0 is the column of the centre
    corners = g.pixels[:, 0, :3, :3].ravel()                           # mostly sky: sqrt(200 + 5^2) e- rms
    assert abs(1.4826 * np.median(np.abs(corners - np.median(corners))) / 15.0 - 1) < 0.05
