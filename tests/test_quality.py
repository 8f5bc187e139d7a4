"""What the models must reach, on small sets (the full-size figures come from benchmarks/denoise.py)."""

import numpy as np
import pytest

from specae.baselines import WeightedPCA
from specae.data.payne import PayneEmulator
from specae.data.spectra import Spectra
from specae.data.synthetic import add_noise
from specae.calibration import fit_calibration
from specae.denoise import denoise
from specae.metrics import coverage, error_over_sigma, rmse
from specae.models.config import ModelConfig
from specae.train import TrainConfig, fit
from tests.conftest import shared_dir

pytestmark = pytest.mark.slow(minutes=3)


def window(s: Spectra, a: int, b: int) -> Spectra:
    return Spectra(s.wave[a:b], s.flux[:, a:b], s.ivar[:, a:b], s.mask[:, a:b], s.labels, s.ids, s.scale, s.meta)


@pytest.fixture(scope="module")
def payne_run():
    emu = PayneEmulator(shared_dir("payne"))
    noisy, clean = emu.mock(3300, seed=11)
    a, b = 0, 800   # a window of the blue chip keeps the test fast; the benchmark uses all 7214 pixels
    noisy, clean = window(noisy, a, b), window(clean, a, b)
    ev = ~emu.bad_pixels[a:b]
    train, test, truth = noisy[:3000], noisy[3000:], clean.flux[3000:]
    fit_set, val = train.split((0.85, 0.15), seed=0)
    model, hist = fit(fit_set, val, ModelConfig(npix=train.npix, latent_dim=6),
                      TrainConfig(epochs=30, patience=8, lr=2e-3, progress=False))   # few steps: a faster rate
    fit_calibration(model, hist.pop("validation"))
    d = denoise(model, test)
    return d, WeightedPCA(6).fit(train), test, truth, np.broadcast_to(ev, truth.shape), hist, model


def test_vae_beats_weighted_pca_on_held_out_apogee_emulator_spectra(payne_run):
    d, pca, test, truth, ev, hist, _ = payne_run
    pca_flux, _ = pca.denoise(test)
    r_vae, r_pca = rmse(d.flux, truth, ev), rmse(pca_flux, truth, ev)
    print(f"VAE {r_vae:.5f} PCA {r_pca:.5f} ratio {r_vae / r_pca:.3f} epochs {len(hist['epoch'])}")
    assert r_vae < 0.92 * r_pca
    assert r_vae < 0.25 * rmse(test.flux, truth, ev & ~test.mask)


def test_vae_sigma_is_calibrated_on_all_pixels_masked_included(payne_run):
    d, _, test, truth, ev, hist, model = payne_run
    c1, c2 = coverage(d.flux, d.sigma, truth, 1, ev), coverage(d.flux, d.sigma, truth, 2, ev)
    ratio = error_over_sigma(d.flux, d.sigma, truth, ev)
    c_masked = coverage(d.flux, d.sigma, truth, 1, ev & test.mask)
    expect1, expect2 = np.nanmean(d.predicted_coverage(1)[ev]), np.nanmean(d.predicted_coverage(2)[ev])
    print(f"coverage 1 sigma {c1:.3f} (predicted {expect1:.3f}), 2 sigma {c2:.3f} ({expect2:.3f}), err/sigma "
          f"{ratio:.3f}, masked pixels {c_masked:.3f}; {model.calibration}")
    # 6 points, not the benchmarks' 4: fitted on 3e5 pixels of 800-pixel spectra, the error model's constants vary
    # with the sample (the demo's stars, calibrated on three samples of 100 spectra: 66-77 % inside +-1 sigma,
    # benchmarks/results/stability-demo.md); here 73.5 % (err/sigma 0.93) when written
    assert abs(c1 - expect1) < 0.06 and abs(c2 - expect2) < 0.02 and 0.9 <= ratio <= 1.1
    assert 0.6 <= c_masked <= 0.76
    # pixels no training spectrum covered (APOGEE's always-masked ones) are flagged, not invented
    np.testing.assert_array_equal(d.unseen, ~ev)
    assert np.all(np.isfinite(d.sigma[ev])) and np.all(d.sigma[ev] > 0) and np.all(np.isinf(d.sigma[~ev]))
    # as good for noisy as for clean spectra
    snr = test.labels["SNR"]
    for lo, hi in ((5, 15), (15, 80)):
        rows = ((snr >= lo) & (snr < hi))[:, None]
        assert 0.62 <= coverage(d.flux, d.sigma, truth, 1, ev & rows) <= 0.76     # 75 % at S/N 15-80 when written


def test_held_out_pixels_check_sigma_without_truth(payne_run):
    # on spectra like the training set, each pixel predicted from the others lands inside its measurement's
    # +-1 sigma as often as a Gaussian says: the check a survey can run on its own data
    from specae.denoise import heldout

    _, _, test, _, ev, _, model = payne_run
    h = heldout(model, test, passes=5)
    np.testing.assert_array_equal(h.n, (ev & ~test.mask).sum(1))      # every valid pixel the model saw, once
    n = h.n.sum()
    c1, c2 = np.sum(h.within(1) * h.n) / n, np.sum(h.within(2) * h.n) / n
    print(f"held-out emulator pixels: {c1:.3f} inside 1 sigma, {c2:.3f} inside 2, chi2/dof {np.mean(h.chi2_dof()):.3f}")
    assert 0.65 <= c1 <= 0.72 and 0.93 <= c2 <= 0.975


def test_real_apogee_spectra_unlike_the_training_set_need_their_own_calibration_and_get_it(payne_run):
    # real aspcapStar spectra (cool dwarfs and giants, outside the emulator's range), resampled onto the
    # model's window: the model is wrong by several times the noise. The error model fitted on the emulator's stars
    # describes the errors of spectra like those (one scale of the model error for all: specae.errormodel says why
    # there is no scale per spectrum), so on these its sigma is too narrow, as PCA's is (33 % inside +-1 sigma when
    # written); refitted on half of the real stars (specae calibrate: no truth, no retraining) it covers the other
    # half (74 %). Their errors, and the combined spectra's noise, are correlated between neighbouring pixels, and
    # the noise scale reaches its bound (0.5: the stated noise is taken as right within a factor 2)
    from dataclasses import replace

    from specae.data.readers import read_many
    from specae.denoise import heldout

    _, pca, _, _, _, _, model = payne_run
    real = read_many(sorted(shared_dir("apogee").glob("aspcapStar-*.fits")), wave=model.wave)
    first, second = real.select(np.arange(0, len(real), 2)), real.select(np.arange(1, len(real), 2))

    def check(m, s):
        h = heldout(m, s)
        n = h.n.sum()
        return h, np.sum(h.within(1) * h.n) / n, np.sum(h.within(2) * h.n) / n

    h, c1, c2 = check(model, second)
    h_pca, c1_pca, _ = check(pca, second)
    ok = np.isfinite(h.z)
    noise = np.sqrt(np.median(1 / second.ivar[ok]))
    err, err_pca = (np.sqrt(np.mean((second.flux - f)[ok] ** 2)) for f in (h.flux, h_pca.flux))
    trained = model.calibration
    try:
        fit_calibration(model, first)
        _, r1, r2 = check(model, second)
        refitted = model.calibration
    finally:
        model.calibration = trained
    print(f"real APOGEE held-out pixels: rms error {err:.4f} (PCA {err_pca:.4f}) against noise {noise:.4f}; "
          f"{c1:.3f} inside 1 sigma (PCA {c1_pca:.3f}), {c2:.3f} inside 2; recalibrated on the other stars "
          f"{r1:.3f} / {r2:.3f}; {replace(refitted, n_pixels=0)}")
    assert err > 2 * noise                   # the model is out of its depth: its sigma, not the noise, decides
    assert err < err_pca and c1_pca < 0.5    # PCA's propagated sigma does not know it is wrong
    assert c1 < 0.5 and c2 < 0.8             # nor does specae's fitted on other stars
    assert 0.6 <= r1 <= 0.8 and r2 >= 0.9     # refitted on real stars, it does


def test_small_monitoring_set_is_never_worse_than_weighted_pca():
    # tens of epochs of one star at varying S/N: the VAE starts at the weighted-PCA solution and keeps it
    # unless validation says otherwise, so held-out epochs come out no worse than PCA with as many components
    from specae.data.synthetic import stellar_spectra

    truth = stellar_spectra(1, seed=3, labels={"TEFF": 5200.0, "LOGG": 4.4, "FE_H": -0.3})
    repeated = Spectra(truth.wave, np.repeat(truth.flux, 60, 0), np.ones((60, truth.npix)))
    noisy = add_noise(repeated, seed=4, snr=(5, 30))
    train, test = noisy[:40], noisy[40:]
    fit_set, val = train.split((0.8, 0.2), seed=0)
    model, hist = fit(fit_set, val, ModelConfig(npix=train.npix, latent_dim=4),
                      TrainConfig(epochs=30, patience=8, progress=False))
    fit_calibration(model, hist.pop("validation"))
    d = denoise(model, test)
    clean = np.repeat(truth.flux, 20, 0)
    r_vae = rmse(d.flux, clean)
    r_pca = rmse(WeightedPCA(4).fit(fit_set).denoise(test)[0], clean)        # the spectra the VAE trained on
    r_pca_all = rmse(WeightedPCA(4).fit(train).denoise(test)[0], clean)      # PCA needs no validation spectra
    print(f"monitoring set: VAE {r_vae:.4g} PCA {r_pca:.4g} (on all {len(train)}: {r_pca_all:.4g}), "
          f"best epoch {hist['best_epoch']}")
    assert r_vae <= r_pca and r_vae <= 1.05 * r_pca_all
