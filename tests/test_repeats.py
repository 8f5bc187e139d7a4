"""specae.repeats on synthetic repeat observations with known truth (stub denoisers), and `specae repeats` end to
end on the real APOGEE visits of ../shared/data with a tiny model.

Tolerances: the robust RMS (1.4826 MAD) of n normal values has a relative standard error of about 1.166/sqrt(n),
a fraction p of them a standard error sqrt(p (1 - p) / n); with n the pixels of one pair, 3 such errors bound the
overall values (medians over, and pools of, many pairs, which are at least as precise as one pair).
"""

import h5py
import numpy as np
import pytest
from scipy.special import erf

from specae.cli import main
from specae.data.hdf5 import read_h5
from specae.data.resample import loglam_grid
from specae.data.spectra import Spectra
from specae.errors import SpecaeError
from specae.repeats import C_KMS, repeats
from tests.conftest import shared_dir

WAVE = loglam_grid(4000, 6000, 1e-4)   # 1761 pixels
VISITS = (3, 4, 3, 4)                  # 4 objects, 14 observations, 2 (3*2 + 4*3) = 36 ordered pairs
ROBUST_TOL = 3 * 1.166 / np.sqrt(WAVE.size)


def within_tol(p):
    return 3 * np.sqrt(p * (1 - p) / WAVE.size)


class Stub:
    """A denoiser returning given rows, found by the spectra's ids (their row numbers): (flux, sigma)."""

    def __init__(self, flux, sigma):
        self.flux, self.sigma = flux, sigma

    def denoise(self, spectra):
        rows = spectra.ids.astype(int)
        return self.flux[rows], self.sigma[rows]


def observe(noise=0.05, factor=None, seed=0):
    """(truth, Spectra): each object's own absorption lines in its rest frame, seen at a random velocity
    (label V, km/s) with independent noise; `factor(rng, t)` optionally scales each observation's flux and
    sigma, as a flux calibration would (t in [-1, 1] along the grid)."""
    rng = np.random.default_rng(seed)
    lines = [rng.uniform(4050, 5950, 150) for _ in VISITS]
    obj = np.repeat(np.arange(len(VISITS)), VISITS)
    v = rng.uniform(-100, 100, obj.size)
    rest = WAVE / (1 + v[:, None] / C_KMS)                           # (N, npix) rest wavelength of each pixel
    truth = 1 - sum(0.4 * np.exp(-0.5 * ((rest - c[obj, None]) / (4e-4 * c[obj, None])) ** 2)
                    for c in np.array(lines).T)
    sigma = noise * rng.uniform(0.5, 1.5, truth.shape)
    flux = truth + sigma * rng.standard_normal(truth.shape)
    if factor is not None:
        t = np.linspace(-1, 1, WAVE.size)
        f = np.array([factor(rng, t) for _ in obj])
        flux, sigma = flux * f, sigma * f
    return truth, Spectra(WAVE, flux, 1 / sigma ** 2, labels={"OBJ": np.array([f"star{k}" for k in obj]), "V": v})


@pytest.fixture(scope="module")
def synthetic():
    return observe()


def test_perfect_denoiser_leaves_only_the_others_noise(synthetic):
    truth, spectra = synthetic
    raw_sigma = 1 / np.sqrt(spectra.ivar)
    check = repeats(Stub(truth, np.zeros_like(truth)), spectra, "OBJ", velocity="V",
                    baseline=Stub(spectra.flux, raw_sigma))
    assert len(check.objects) == 4 and list(check.n_obs) == list(VISITS) and len(check.pair_object) == 36
    assert (check.n_pixels > 0.9 * WAVE.size).all()   # only the edges the shift moves out are lost
    overall = check.overall
    for k in ("noise_left", "noise_left_raw", "spread"):
        assert overall[k] == pytest.approx(1, abs=ROBUST_TOL), k
    assert overall["within1"] == pytest.approx(0.683, abs=within_tol(0.683))
    assert overall["within2"] == pytest.approx(0.954, abs=within_tol(0.954))
    # the raw observation as "denoised": the other's noise plus its own, sqrt(1 + s_i^2 / s_j^2) > 1.4 of it
    assert overall["noise_left_baseline"] > 1.4
    assert np.all(np.abs(check.per_object["spread"] - 1) < ROBUST_TOL)


def test_sigma_half_the_truth_doubles_the_spread():
    s, e = 0.01, 0.1   # observations much better than the denoiser, so its sigma dominates u
    truth, spectra = observe(noise=s)
    denoised = truth + e * np.random.default_rng(1).standard_normal(truth.shape)
    right = repeats(Stub(denoised, np.full(truth.shape, e)), spectra, "OBJ", velocity="V").overall
    half = repeats(Stub(denoised, np.full(truth.shape, e / 2)), spectra, "OBJ", velocity="V").overall
    assert right["spread"] == pytest.approx(1, abs=ROBUST_TOL)
    assert right["within1"] == pytest.approx(0.683, abs=within_tol(0.683))
    # u = r / sqrt(e^2/4 + s^2) with r of sd sqrt(e^2 + s^2): spread sqrt(101/26) = 1.97 (the others' rebinned
    # sigma lies between 0.71 and 1 s, which moves it by < 0.01)
    spread = np.sqrt((e ** 2 + s ** 2) / (e ** 2 / 4 + s ** 2))
    assert half["spread"] == pytest.approx(spread, rel=ROBUST_TOL)
    p1 = erf(1 / spread / np.sqrt(2))   # 0.39 inside +-1
    assert half["within1"] == pytest.approx(p1, abs=within_tol(p1))


def test_smooth_multiplicative_mismatch_is_matched_away():
    truth, spectra = observe(factor=lambda rng, t: rng.uniform(0.5, 2) * (1 + rng.uniform(-0.3, 0.3) * t
                                                                           + rng.uniform(-0.2, 0.2) * t ** 2))
    perfect = Stub(truth, np.zeros_like(truth))
    matched = repeats(perfect, spectra, "OBJ", velocity="V").overall
    assert matched["noise_left"] == pytest.approx(1, abs=ROBUST_TOL)
    assert matched["noise_left_raw"] == pytest.approx(1, abs=ROBUST_TOL)
    assert repeats(perfect, spectra, "OBJ", velocity="V", degree=0).overall["noise_left"] > 2   # a scale alone


def test_velocity_label_aligns_the_observations(synthetic):
    truth, spectra = synthetic
    perfect = Stub(truth, np.zeros_like(truth))
    aligned = repeats(perfect, spectra, "OBJ", velocity="V").overall
    unshifted = repeats(perfect, spectra, "OBJ").overall   # lines up to 3 pixels apart
    assert aligned["noise_left"] == pytest.approx(1, abs=ROBUST_TOL)
    assert aligned["noise_left_raw"] == pytest.approx(1, abs=ROBUST_TOL)
    assert unshifted["noise_left"] > 1.3 and unshifted["within2"] < aligned["within2"] - 0.1


def test_user_errors_name_the_problem(synthetic):
    truth, spectra = synthetic
    perfect = Stub(truth, np.zeros_like(truth))
    with pytest.raises(SpecaeError, match="no label 'STAR'"):
        repeats(perfect, spectra, "STAR")
    with pytest.raises(SpecaeError, match="no object has 2 or more observations by label 'V'"):
        repeats(perfect, spectra, "V")   # every velocity differs
    with pytest.raises(SpecaeError, match="velocity label 'VHELIO' is not in the data"):
        repeats(perfect, spectra, "OBJ", velocity="VHELIO")
    with pytest.raises(SpecaeError, match="not both"):
        repeats(perfect, spectra, "OBJ", velocity="V", redshift="Z")


# ------------------------------------------------------------------------------------------------
# `specae repeats` on real APOGEE visits

STARS = {"2M08501918+1056436": 12, "2M14305591+0858023": 3, "2M13564148+4342587": 3, "2M05392474+4038437": 3,
         "2M00452143+1634446": 3, "2M03122509+0021585": 1}   # the last one has a single visit: left out


@pytest.fixture(scope="module")
def visits(tmp_path_factory, one_thread):
    """(model, data): 25 visits of 6 stars on a 709-pixel stretch of the blue chip, and a VAE trained on them
    for one epoch (small enough to train in ~15 s on 2 cores)."""
    folder = shared_dir("apogee_visits")
    d = tmp_path_factory.mktemp("visits")
    files = sorted(str(p) for star in STARS for p in folder.glob(f"apVisit-{star}-*.fits.gz"))
    assert len(files) == sum(STARS.values())
    assert main(["convert", *files, "-o", str(d / "visits.h5"), "--grid", "loglam:15200:15450:1e-5"]) == 0
    assert main(["train", str(d / "visits.h5"), "-o", str(d / "model"), "--epochs", "1", "--latent-dim", "2",
                 "--quiet", "--device", "cpu"]) == 0
    return d / "model", d / "visits.h5"


def test_cli_writes_pairs_and_objects_and_prints_the_table(visits, tmp_path, capsys):
    model, data = visits
    capsys.readouterr()
    out = tmp_path / "repeats.h5"
    assert main(["repeats", str(model), str(data), "--group", "OBJID", "--velocity", "VRAD", "-o", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()

    repeated = {k: n for k, n in STARS.items() if n > 1}
    n_pairs = sum(n * (n - 1) for n in repeated.values())
    with h5py.File(out) as f:
        names = [n.decode() for n in f["objects/name"][()]]
        assert dict(zip(names, f["objects/n_obs"][()])) == repeated
        pairs = {k: f["pairs"][k][()] for k in f["pairs"]}
        assert f.attrs["group"] == "OBJID" and f.attrs["velocity"] == "VRAD" and f.attrs["degree"] == 3
        meta = read_h5(data, slice(0, 1)).meta   # the input's flux unit and frame, and the model, carried
        assert (f.attrs["flux_unit"], f.attrs["frame"], f.attrs["model"]) == (meta["flux_unit"], meta["frame"],
                                                                              str(model))
        assert 0.5 < f.attrs["noise_left_raw"] < 3 and 0 < f.attrs["within1"] < f.attrs["within2"] < 1
        assert all(np.isfinite(f["objects"][k][()]).all() for k in ("noise_left", "noise_left_baseline", "spread"))
    assert all(len(v) == n_pairs for v in pairs.values())
    assert (pairs["denoised"] != pairs["other"]).all() and (pairs["n_pixels"] > 300).all()
    for a, b, m in zip(pairs["denoised_id"], pairs["other_id"], pairs["object"]):
        assert a.decode().split(":")[0] == b.decode().split(":")[0] == names[m]   # ids are OBJID:plate-mjd-fiber
    for k in ("noise_left", "noise_left_baseline", "noise_left_raw", "spread", "within1", "within2"):
        assert np.isfinite(pairs[k]).all(), k

    assert printed[0].split()[:2] == ["object", "visits"] and "PCA" in printed[0] and "in +-1" in printed[0]
    assert [line.split()[:2] for line in printed[1:1 + len(repeated)]] == [[k, str(n)] for k, n in
                                                                           sorted(repeated.items())]
    assert printed[1 + len(repeated)].startswith(f"all ({len(repeated)} objects)")
    assert printed[-1].startswith(f"{n_pairs} pairs written to {out}")


def test_cli_group_label_absent_is_one_error_line(visits, tmp_path, capsys):
    model, data = visits
    capsys.readouterr()
    out = tmp_path / "repeats.h5"
    assert main(["repeats", str(model), str(data), "--group", "STAR_ID", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"specae: error: {data}: no label 'STAR_ID'") and err.count("\n") == 1
    assert "OBJID" in err   # names the labels there are
    assert not list(tmp_path.iterdir())
