"""`specae gan train / sample / evaluate / score / latent` end to end at tiny size, and the contract on bad
input: one 'specae: error:' line, exit code 2, no output file."""

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from specae.cli import main
from specae.images.synthetic import galaxies

pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    g = galaxies(100, size=32, seed=7)
    np.savez(d / "gal.npz", images=g.pixels, **g.labels)
    np.save(d / "gal64.npy", galaxies(20, size=64, seed=8).pixels)
    rgb = np.random.default_rng(0).uniform(0, 1, (64, 160, 3)).astype(np.float32)
    mpimg.imsave(d / "sky.png", rgb)
    return d


@pytest.fixture(scope="module")
def gan_dir(files):
    out = files / "GAN"
    assert main(["gan", "train", str(files / "gal.npz"), "-o", str(out), "--width", "4", "--epochs", "2",
                 "--batch-size", "32", "--quiet"]) == 0
    return out


def test_train_sample_evaluate_score_latent(files, gan_dir, capsys, tmp_path):
    assert (gan_dir / "generator" / "weights.pt").is_file() and (gan_dir / "discriminator" / "weights.pt").is_file()
    code, out, err = run(capsys, "gan", "sample", gan_dir, "-n", "5", "-o", tmp_path / "s.npy", "--png", tmp_path / "g.png")
    assert code == 0 and "wrote 5 samples" in out
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (5, 1, 32, 32) and s.dtype == np.float32 and np.isfinite(s).all()
    assert mpimg.imread(tmp_path / "g.png").shape[0] > 32

    code, out, err = run(capsys, "gan", "evaluate", gan_dir, files / "gal.npz", "-o", tmp_path / "m.json")
    assert code == 0 and "recall" in out and "nearest-training ratio" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["images"].startswith("the held-out part") and m["n_held_out"] == 20
    assert set(m["morphology"]["r50"]) == {"gan", "real"} and "ratio" in m["memorisation"]

    code, out, err = run(capsys, "gan", "score", gan_dir, files / "gal.npz", "-o", tmp_path / "logit.npy")
    logits = np.load(tmp_path / "logit.npy")
    assert code == 0 and logits.shape == (100,) and logits.dtype == np.float32
    code, out, err = run(capsys, "gan", "score", gan_dir / "discriminator", files / "gal64.npy", "-o",
                         tmp_path / "p.npy", "--probability")   # D alone; 64-pixel images binned to 32
    p = np.load(tmp_path / "p.npy")
    assert code == 0 and p.shape == (20,) and ((p > 0) & (p < 1)).all()

    code, out, err = run(capsys, "gan", "latent", gan_dir, "-o", tmp_path / "lat", "-n", "200")
    assert code == 0 and {f.name for f in (tmp_path / "lat").iterdir()} == {
        "direction_r50.png", "direction_ellipticity.png", "interpolation.png", "arithmetic.png"}


def test_train_on_a_large_image_holds_out_a_band_and_resumes(files, capsys, tmp_path):
    out = tmp_path / "SKY"
    code, text, err = run(capsys, "gan", "train", files / "sky.png", "-o", out, "--tile", "32", "--width", "4",
                          "--epochs", "1", "--quiet")
    assert code == 0 and "on 8 images (2 held out)" in text                # 2 x 5 tiles; the right column held out
    code, text, err = run(capsys, "gan", "train", files / "sky.png", "-o", out, "--epochs", "2", "--quiet", "--resume")
    assert code == 0 and "for 2 epochs" in text
    assert json.loads((out / "history.json").read_text())["epoch"] == [0, 1]
    code, text, err = run(capsys, "gan", "sample", out, "-n", "2", "-o", tmp_path / "rgb.npy")
    assert np.load(tmp_path / "rgb.npy").shape == (2, 3, 32, 32)


@pytest.mark.parametrize("argv, message", [
    (["gan", "train", "{d}/missing.npy", "-o", "{t}/OUT"], "no such file"),
    (["gan", "train", "{d}/sky.png", "-o", "{t}/OUT"], "give --tile"),
    (["gan", "train", "{d}/gal.npz", "-o", "{t}/OUT", "--size", "64"], "cannot be binned to 64"),
    (["gan", "train", "{d}/gal.npz", "-o", "{t}/OUT", "--diffaug", "colour"], "unknown DiffAugment"),
    (["gan", "train", "{d}/gal.npz", "-o", "{t}/OUT", "--resume"], "no earlier GAN run"),
    (["gan", "train", "{d}/gal.npz", "-o", "{t}/no/such/dir/OUT"], "does not exist"),
    (["gan", "sample", "{t}", "-o", "{t}/OUT"], "not a specae GAN"),
    (["gan", "sample", "{g}", "-o", "{t}/no/OUT", "--png", "{t}/g.png"], "does not exist"),
    (["gan", "sample", "{g}", "-o", "{t}/OUT", "--png", "{t}/no/g.png"], "does not exist"),
    (["gan", "evaluate", "{g}", "{d}/sky.png", "-o", "{t}/OUT"], "the GAN makes (1, 32, 32)"),
    (["gan", "score", "{g}", "{d}/sky.png", "-o", "{t}/OUT"], "scores (1, 32, 32)"),
    (["gan", "score", "{d}", "{d}/gal.npz", "-o", "{t}/OUT"], "not a specae discriminator"),
])
def test_bad_input_gives_one_line_exit_2_and_no_output(files, gan_dir, capsys, tmp_path, argv, message):
    before = set(files.iterdir())
    code, out, err = run(capsys, *[a.format(d=files, t=tmp_path, g=gan_dir) for a in argv])
    assert code == 2 and err.startswith("specae: error: ") and err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == [] and set(files.iterdir()) == before
