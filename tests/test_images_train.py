"""GAN training through the engine at tiny size: checkpoints (G and D apart, weights_only, a malicious
pickle refused), resume, the objective's options, samples in the images' units, the feature extractor,
evaluation and the latent tools."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from specae.engine import Runtime, StepContext
from specae.errors import SpecaeError
from specae.images.checkpoint import GAN, load_gan, load_net
from specae.images.data import split_images
from specae.images.evaluate import evaluate_gan
from specae.images.features import FeatureExtractor, targets, train_extractor
from specae.images.latent import property_direction, size_shape_analogy, slerp, traverse
from specae.images.metrics import MORPHOLOGY, morphology
from specae.images.models import NetConfig
from specae.images.objective import GANConfig, GANObjective
from specae.images.sampling import sample, score
from specae.images.synthetic import galaxies
from specae.images.train import fit_gan
from specae.images.transforms import AsinhStretch

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = GANConfig(width=4, epochs=2, batch_size=32, ema=0.99, progress=False, seed=0)


@pytest.fixture(scope="module")
def data():
    return split_images(galaxies(160, size=32, seed=5), 0.25)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "GAN"
    gan, history = fit_gan(*data, TINY, out_dir=out, data={"note": "test"})
    return out, gan, history


def test_training_runs_through_the_engine_and_writes_g_and_d_apart(trained, data):
    out, gan, history = trained
    assert history["epoch"] == [0, 1] and history["stopped"] == "epochs" and history["n_train"] == 120
    assert all(np.isfinite(history[k]).all() for k in ("train_loss_d", "train_loss_g", "val_p_real", "val_p_fake"))
    # the epoch whose samples' worst morphology statistic matches the training images best is kept
    assert history["best_epoch"] == int(np.argmin(history["val_morphology_max"]))
    assert history["best_val_morphology_max"] == min(history["val_morphology_max"])
    for part in ("generator", "discriminator"):
        blob = torch.load(out / part / "weights.pt", map_location="cpu", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in blob.values())
        cfg = json.loads((out / part / "config.json").read_text())
        assert cfg["kind"] == part and cfg["net"]["width"] == 4 and cfg["stretch"] == gan.stretch.to_dict()
    # the stretch the generator learns in: linear up to GANConfig.softening (10) sigma of the sky
    np.testing.assert_allclose(gan.stretch.scale, AsinhStretch.fit(data[0].pixels, 10.0).scale)
    g_keys = torch.load(out / "generator" / "weights.pt", weights_only=True).keys()
    assert "convs.0.weight" in g_keys and "norms.0.running_var" in g_keys
    info = json.loads((out / "gan.json").read_text())
    assert info["config"]["width"] == 4 and info["data"] == {"note": "test"} and info["epoch"] == history["best_epoch"]
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert set(state["modules"]) == {"G", "D"} and state["epoch"] == 2
    loaded = load_gan(out)
    torch.testing.assert_close(loaded.generator(torch.ones(2, 100)), gan.generator.cpu()(torch.ones(2, 100)))


def test_discriminator_alone_scores_images(trained, data):
    out, gan, _ = trained
    disc, net, stretch = load_net(out / "discriminator", "discriminator")
    logits = score(disc, stretch, data[1].pixels)
    assert logits.shape == (40,) and logits.dtype == np.float32 and np.isfinite(logits).all()
    np.testing.assert_allclose(logits, score(gan.discriminator.cpu(), gan.stretch, data[1].pixels), rtol=1e-5, atol=1e-5)
    with pytest.raises(SpecaeError, match="scores \\(1, 32, 32\\)"):
        score(disc, stretch, np.zeros((2, 3, 32, 32), np.float32))


def test_samples_come_back_in_the_training_images_units(trained):
    out, gan, _ = trained
    loaded = load_gan(out)
    x = sample(loaded, 10, seed=3)
    assert x.shape == (10, 1, 32, 32) and x.dtype == np.float32
    assert np.abs(x).max() <= max(loaded.stretch.peak) * 1.0001
    z = torch.randn(10, 100, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(x, loaded.stretch.inverse(loaded.generator(z).detach().numpy()), rtol=1e-5)
    np.testing.assert_array_equal(sample(loaded, 10, seed=3), x)       # reproducible from the seed


def test_resume_continues_the_epochs_and_retraces_an_uninterrupted_run(data, tmp_path):
    fit_gan(*data, TINY, out_dir=tmp_path / "a")
    resumed, h = fit_gan(*data, replace(TINY, epochs=3), out_dir=tmp_path / "a", resume=True)
    straight, h3 = fit_gan(*data, replace(TINY, epochs=3), out_dir=tmp_path / "b")
    assert h["epoch"] == [0, 1, 2] and len(h["train_loss_d"]) == 3
    assert json.loads((tmp_path / "a" / "history.json").read_text())["epoch"] == [0, 1, 2]
    np.testing.assert_allclose(h["train_loss_d"], h3["train_loss_d"], rtol=1e-5)
    for a, b in zip(resumed.generator.state_dict().values(), straight.generator.state_dict().values()):
        torch.testing.assert_close(a, b)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_as_checkpoint_is_refused_without_running(trained, tmp_path):
    import shutil

    out, _, _ = trained
    bad = tmp_path / "GAN"
    shutil.copytree(out, bad)
    marker = tmp_path / "pwned"
    torch.save({"convs.0.weight": _Evil(marker)}, bad / "generator" / "weights.pt")
    assert not marker.exists()
    with pytest.raises(SpecaeError, match="generator: damaged or incompatible generator checkpoint"):
        load_gan(bad)
    assert not marker.exists()
    (bad / "generator" / "weights.pt").write_bytes(b"truncated")
    with pytest.raises(SpecaeError, match="generator: damaged or incompatible"):
        load_gan(bad)
    (bad / "discriminator" / "config.json").write_text(json.dumps({"kind": "generator"}))
    with pytest.raises(SpecaeError, match="not a specae discriminator|damaged"):
        load_net(bad / "discriminator", "discriminator")


def context(objective, seed=0):
    """A StepContext for calling an objective's steps by hand, as the engine would on the CPU."""
    mods = objective.modules()
    opts = objective.optimizers()
    scheds = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0) for k, o in opts.items()}
    ctx = StepContext(Runtime(torch.device("cpu")), mods, opts, scheds, None)
    ctx.generator.manual_seed(seed)
    return ctx


@pytest.mark.parametrize("options", [dict(loss="hinge"), dict(spectral_norm=True), dict(r1=10.0, r1_every=1),
                                     dict(diffaug=("translation", "cutout")), dict(noise=True), dict(dense=True),
                                     dict(precision="bf16")])
def test_objective_options_take_finite_steps(data, options):
    cfg = replace(TINY, **options)
    net = cfg.net(1)
    stretch = AsinhStretch.fit(data[0].pixels)
    torch.manual_seed(0)
    obj = GANObjective(cfg, net, stretch)
    ctx = context(obj)
    if cfg.precision == "bf16":
        ctx.rt = Runtime(torch.device("cpu"), "bf16")
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in obj.modules().items()}
    batch = {"image": torch.from_numpy(stretch.forward(data[0].pixels[:16]))}
    out = obj.train_step(batch, ctx)
    assert set(out) == {"loss_d", "loss_g", "d_real", "d_fake"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    for name in ("G", "D"):
        assert any(not torch.equal(a, b) for a, b in zip(before[name], obj.modules()[name].parameters()))


def test_r1_penalty_changes_the_discriminator_step(data):
    stretch = AsinhStretch.fit(data[0].pixels)
    batch = {"image": torch.from_numpy(stretch.forward(data[0].pixels[:16]))}
    after = []
    for gamma in (0.0, 100.0):
        torch.manual_seed(0)
        obj = GANObjective(replace(TINY, r1=gamma, r1_every=1), TINY.net(1), stretch)
        obj.train_step(batch, context(obj))
        after.append(torch.cat([p.detach().flatten() for p in obj.D.parameters()]))
    assert not torch.allclose(after[0], after[1])


def test_with_ema_the_averaged_generator_is_exported(data, tmp_path):
    fit_gan(*data, replace(TINY, epochs=1, ema=0.9), out_dir=tmp_path / "e")
    state = torch.load(tmp_path / "e" / "train_state.pt", weights_only=True)
    exported = torch.load(tmp_path / "e" / "generator" / "weights.pt", weights_only=True)["convs.0.weight"]
    torch.testing.assert_close(exported, state["average"][0])        # G's first layer, averaged by the engine
    assert not torch.allclose(exported, state["modules"]["G"]["convs.0.weight"])
    with pytest.raises(SpecaeError, match="EMA decay"):
        replace(TINY, ema=1.5).check()


def test_selection_by_the_mean_morphology_distance_keeps_that_epoch(data):
    _, history = fit_gan(*data, replace(TINY, epochs=3, select="morphology"))
    assert len(history["val_morphology_max"]) == 3
    assert all(w >= m for w, m in zip(history["val_morphology_max"], history["val_morphology"]))
    assert history["best_epoch"] == int(np.argmin(history["val_morphology"]))
    with pytest.raises(SpecaeError, match="unknown epoch selection"):
        replace(TINY, select="kid").check()


def test_fit_rejects_images_of_another_size(data):
    with pytest.raises(SpecaeError, match="makes 64x64 images"):
        fit_gan(*data, replace(TINY, size=64))


def test_feature_extractor_learns_the_labels_and_round_trips(data, tmp_path):
    train, held = data
    stretch = AsinhStretch.fit(train.pixels)
    ext = train_extractor(train, stretch, epochs=25)
    names = list(targets(train))
    assert "cos2pa" in names and "pa" not in names and "measured_r50" in names
    f = ext.features(stretch.forward(held.pixels))
    assert f.shape == (40, 64) and np.isfinite(f).all() and f.std(axis=0).max() > 0
    ext.save(tmp_path / "features")
    np.testing.assert_array_equal(FeatureExtractor.load(tmp_path / "features").features(stretch.forward(held.pixels)), f)
    # the features carry what the extractor was trained to predict: a linear read-out of log flux
    x = np.c_[ext.features(stretch.forward(train.pixels)), np.ones(len(train))]
    coef = np.linalg.lstsq(x, np.log(train.labels["flux"]), rcond=None)[0]
    pred = np.c_[f, np.ones(len(f))] @ coef
    assert np.corrcoef(pred, np.log(held.labels["flux"]))[0, 1] > 0.8


def test_evaluation_reports_every_metric_beside_real_vs_real(trained, data):
    out, gan, _ = trained
    report = evaluate_gan(load_gan(out), data[1], data[0])
    assert report["n_per_half"] == [20, 20] and report["n_generated"] == 20
    assert set(report["morphology"]) == set(MORPHOLOGY)
    for key in ("kid", "precision", "recall", "morphology_mean", "morphology_max"):
        assert set(report[key]) == {"gan", "real"} and np.isfinite(list(report[key].values())).all()
    assert report["memorisation"]["ratio"] > 0 and report["features"]["trained_on"] == "the training images"
    assert (out / "features" / "config.json").is_file()
    again = evaluate_gan(load_gan(out), data[1], data[0])
    assert again["features"]["trained_on"].startswith("cached in") and again["kid"] == report["kid"]
    with pytest.raises(SpecaeError, match="at least 8"):
        evaluate_gan(gan, data[1].select(slice(0, 5)))


class _SizeGenerator(nn.Module):
    """A stand-in generator whose galaxy width is 2 + z[0] and whose axis ratio follows z[1]."""

    def __init__(self):
        super().__init__()
        self.cfg = NetConfig(size=32, width=1)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, z, generator=None):
        y, x = torch.meshgrid(torch.arange(32.0) - 15.5, torch.arange(32.0) - 15.5, indexing="ij")
        sx = (2.5 + 0.5 * z[:, 0]).clamp(min=0.8)[:, None, None]
        sy = sx * (1 + 0.2 * z[:, 1].clamp(-2, 2))[:, None, None].abs().clamp(min=0.3)
        return torch.exp(-0.5 * ((x / sx) ** 2 + (y / sy) ** 2))[:, None] + self.dummy   # sky at 0


def test_latent_direction_arithmetic_and_interpolation_on_a_known_generator():
    fake = GAN(_SizeGenerator(), None, NetConfig(size=32, width=1), AsinhStretch((0.1,), (1.0,)), {}, None)
    d = property_direction(fake, "r50", n=400)
    assert abs(d["direction"][0]) > 0.9 and d["direction"][0] > 0 and d["r2"] > 0.6
    steps = np.array([-2.0, 0.0, 2.0])
    grown = morphology(traverse(fake, d["direction"], np.zeros((1, 100)), steps))["r50"]
    assert grown[0] < grown[1] < grown[2]
    z = np.random.default_rng(0).normal(size=(800, 100))
    stats = morphology(fake.stretch.inverse(fake.generator(torch.as_tensor(z, dtype=torch.float32)).detach().numpy()))
    analogy = size_shape_analogy(fake, z, stats)
    assert np.allclose([np.linalg.norm(v) for v in analogy["latents"].values()], 10.0)   # sqrt(latent)
    assert analogy["r50"]["result"] > analogy["r50"]["small_elongated"]
    assert analogy["ellipticity"]["result"] > analogy["ellipticity"]["large_round"]
    a, b = np.random.default_rng(1).normal(size=(2, 100))
    path = slerp(a, b, np.linspace(0, 1, 5))
    np.testing.assert_allclose(path[[0, -1]], [a, b], atol=1e-12)
    assert np.linalg.norm(path[2]) > 0.9 * min(np.linalg.norm(a), np.linalg.norm(b))
    with pytest.raises(SpecaeError, match="unknown property"):
        property_direction(fake, "colour", n=10)
