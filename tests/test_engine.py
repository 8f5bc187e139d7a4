"""The training engine: DDP with two CPU ranks, streaming with bounded memory, resume after a finished or
killed run, the optimizer's weight-decay groups, precision, skipped steps, batch jobs over many files."""

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import specae.data.hdf5
from specae.cli import main
from specae.data.hdf5 import read_h5, write_h5
from specae.data.resample import loglam_grid
from specae.data.sources import H5Blocks, H5Source, TensorSource
from specae.data.synthetic import add_noise, stellar_spectra
from specae.errors import SpecaeError
from specae.model_dir import load_model, round_weights
from specae.models import ModelConfig
from specae.train import TrainConfig, VAEObjective, build_model, fit
from tests.conftest import fit_calibrated

WAVE = loglam_grid(4000, 6000, 1e-3)   # 177 pixels
SMALL = dict(latent_dim=3, dec_hidden=(16, 32), enc_channels=(8, 8, 8), enc_hidden=32, enc_pca=4)
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def small_cfg(**kw) -> ModelConfig:
    return ModelConfig(npix=WAVE.size, **{**SMALL, **kw})


@pytest.fixture(scope="module")
def stars():
    return add_noise(stellar_spectra(100, seed=1, wave=WAVE), seed=2)


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# -- sources ------------------------------------------------------------------------------------------------
def test_tensor_source_shards_each_global_batch_across_ranks():
    src = TensorSource({"i": torch.arange(23)}, batch_size=6, seed=3)
    single = [b["i"] for b in src.batches(epoch=1)]
    assert [len(b) for b in single] == [6, 6, 6, 5] and sorted(torch.cat(single).tolist()) == list(range(23))
    ranks = [[b["i"] for b in src.batches(epoch=1, rank=r, world=2)] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == src.steps(2) == 4
    for k in range(4):   # the two ranks' halves make up exactly the single process's batch
        assert sorted(torch.cat([ranks[0][k], ranks[1][k]]).tolist()) == sorted(single[k].tolist())
    assert not torch.equal(torch.cat(single), torch.cat([b["i"] for b in src.batches(epoch=2)]))


@pytest.fixture
def reads(monkeypatch):
    """The number of rows of every H5Spectra.read call made during the test."""
    calls = []
    real = specae.data.hdf5.H5Spectra.read

    def counting(self, rows=slice(None)):
        out = real(self, rows)
        calls.append(len(out))
        return out

    monkeypatch.setattr(specae.data.hdf5.H5Spectra, "read", counting)
    return calls


def test_h5_source_reads_every_row_once_per_epoch_in_bounded_blocks(tmp_path, stars, reads):
    path = tmp_path / "s.h5"
    write_h5(stars, path)
    blocks = H5Blocks(path, block_rows=7)
    src = H5Source(blocks, None, batch_size=8, num_workers=0, buffer_blocks=2, columns=("TEFF",))
    got = [b for b in src.batches(epoch=0)]
    assert max(reads) <= 7 and sum(reads) == len(stars)
    teff = np.sort(np.concatenate([b["TEFF"].numpy() for b in got]))
    np.testing.assert_allclose(teff, np.sort(stars.labels["TEFF"]).astype(np.float32))
    assert all(len(b["flux"]) <= 8 for b in got) and got[0]["flux"].dtype == torch.float32
    # two ranks: disjoint blocks, the same number of steps
    a, b = (list(src.batches(epoch=0, rank=r, world=2)) for r in range(2))
    assert len(a) == len(b) == src.steps(2)


# -- optimizer, precision -----------------------------------------------------------------------------------
def test_weight_decay_only_on_weights(stars):
    model = build_model(stars, small_cfg())
    opt = VAEObjective(model, TrainConfig(weight_decay=0.1)).optimizers()["model"]
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed | plain == set(names.values()) and not decayed & plain
    assert {"decoder.mean", "decoder.linear", "decoder.log_sigma0", "encoder.skip.weight"} <= plain
    assert not any(n.endswith(".bias") for n in decayed)
    assert "encoder.mlp.0.weight" in decayed and "decoder.body.out.weight" in decayed


def test_bf16_precision_trains_and_evaluates(stars):
    model, history = fit(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=2, batch_size=16, precision="bf16",
                                                                       progress=False))
    assert history["engine_config"]["precision"] == "bf16"
    assert np.isfinite(history["val_chi2_dof"]).all() and history["val_chi2_dof"][-1] < 50
    with pytest.raises(SpecaeError, match="precision"):
        fit(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=1, precision="fp16", progress=False))


def test_non_finite_steps_are_skipped_entirely(stars, monkeypatch):
    # every other batch has a NaN loss: those steps change neither the weights nor Adam's state
    import specae.train

    calls = {"n": 0}
    real = specae.train.gaussian_nll

    def sometimes_nan(*a):
        calls["n"] += 1
        out = real(*a)
        return out * float("nan") if calls["n"] % 2 == 0 and torch.is_grad_enabled() else out

    monkeypatch.setattr(specae.train, "gaussian_nll", sometimes_nan)
    model, history = fit(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=2, batch_size=16, progress=False,
                                                                       max_bad_steps=3))
    assert history["skipped_steps"] >= 4 and np.isfinite(history["val_chi2_dof"]).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- resume ------------------------------------------------------------------------------------------------
def test_resume_after_a_finished_run_continues_from_its_last_epoch(stars, tmp_path, monkeypatch):
    import specae.engine.loop

    out = tmp_path / "m"
    scores = iter([9.0, 0.5, 2.0, 3.0, 1.0, 1.0])   # start, then the best epoch (0) is not the last one (2)
    real = specae.engine.loop.evaluate
    monkeypatch.setattr(specae.engine.loop, "evaluate",
                        lambda *a, **k: {**real(*a, **k), "chi2_dof": next(scores)})
    cfg = dict(batch_size=16, progress=False, patience=100)
    fit(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=3, **cfg), out_dir=out)
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["epoch"] == 3
    seen = {}
    step = VAEObjective.train_step

    def first_step(self, batch, ctx):
        if not seen:
            seen["weights"] = {k: v.clone() for k, v in self.model.state_dict().items()}
            seen["adam_steps"] = {float(s["step"]) for s in ctx.opts["model"].state.values()}
            seen["sched"] = ctx.scheds["model"].last_epoch
            seen["epoch"] = ctx.epoch
        return step(self, batch, ctx)

    monkeypatch.setattr(VAEObjective, "train_step", first_step)
    _, resumed = fit(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=5, **cfg), out_dir=out, resume=True)
    steps = state["step"]
    assert resumed["epoch"] == [0, 1, 2, 3, 4] and seen["epoch"] == 3
    assert seen["adam_steps"] == {float(steps)} and seen["sched"] == steps
    for k, v in state["modules"]["model"].items():        # the last epoch's weights, not the best epoch's
        assert torch.equal(seen["weights"][k], v), k
    best = torch.load(out / "weights.pt", weights_only=True)["state"]
    assert any(not torch.equal(best[k], v) for k, v in state["modules"]["model"].items())
    assert resumed["best_epoch"] == 0 and resumed["best_val_chi2_dof"] == 0.5   # the best is remembered


@pytest.mark.parametrize("damage", ["state_garbage", "state_truncated", "state_pickle", "history_garbage",
                                    "history_not_a_dict"])
def test_damaged_training_state_is_a_one_line_error(stars, tmp_path, capsys, damage):
    data, out = tmp_path / "s.h5", tmp_path / "m"
    write_h5(stars, data)
    args = ["train", data, "-o", out, "--epochs", "1", "--latent-dim", "2", "--batch-size", "16", "--quiet",
            "--keep-state"]
    assert main([str(a) for a in args]) == 0
    capsys.readouterr()
    state, hist = out / "train_state.pt", out / "history.json"
    if damage == "state_garbage":
        state.write_bytes(b"not a torch file")
    elif damage == "state_truncated":
        state.write_bytes(state.read_bytes()[:500])
    elif damage == "state_pickle":
        torch.save({"epoch": 1, "obj": torch.nn.Linear(2, 2)}, state)
    elif damage == "history_garbage":
        hist.write_text("{ nope")
    else:
        hist.write_text("[1, 2]")
    again = ["train", data, "-o", out, "--epochs", "2", "--latent-dim", "2", "--batch-size", "16", "--resume", "--quiet"]
    code = main([str(a) for a in again])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("specae: error: ") and err.count("\n") == 1
    assert ("train_state.pt" in err) if damage.startswith("state") else ("history.json" in err)


def test_training_killed_and_resumed_matches_an_uninterrupted_run(tmp_path):
    data = tmp_path / "s.h5"
    write_h5(add_noise(stellar_spectra(400, seed=3, wave=WAVE), seed=4), data)
    base = [sys.executable, "-m", "specae.cli", "train", str(data), "--epochs", "6", "--latent-dim", "3",
            "--batch-size", "16", "--quiet"]
    straight = subprocess.run(base + ["-o", str(tmp_path / "straight")], env=env(), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(base + ["-o", str(out)], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rng = np.random.default_rng()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:   # wait for the second epoch's state, then kill at a random moment
        try:
            if len(json.loads((out / "history.json").read_text())["epoch"]) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.3))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = len(json.loads((out / "history.json").read_text())["epoch"])
    assert 2 <= done_before < 6
    resumed = subprocess.run(base + ["-o", str(out), "--resume"], env=env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "straight" / "history.json").read_text())
    b = json.loads((out / "history.json").read_text())
    assert b["epoch"] == list(range(6))
    np.testing.assert_allclose(b["val_chi2_dof"], a["val_chi2_dof"], rtol=1e-4)
    assert b["best_val_chi2_dof"] == pytest.approx(a["best_val_chi2_dof"], rel=1e-4)


# -- distributed ---------------------------------------------------------------------------------------------
RANK_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    from specae.data.hdf5 import read_h5
    from specae.models.config import ModelConfig
    from specae.train import TrainConfig, fit

    torch.set_num_threads(1)
    data, out, epochs, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    s = read_h5(data)
    cfg = ModelConfig(npix=s.npix, kind="ae", latent_dim=3, dec_hidden=(16, 32), enc_channels=(8, 8, 8),
                      enc_hidden=32, enc_pca=4)
    model, hist = fit(s[:60], s[60:], cfg, TrainConfig(epochs=epochs, batch_size=16, augment=0.0, device="cpu",
                      distributed=dist.is_torchelastic_launched(), progress=False), out_dir=out, resume=resume)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.pt")
""")


def torchrun(tmp_path, nproc, *args):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                        str(script), *map(str, args)],
                       env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_two_gloo_ranks_agree_and_match_one_process_with_the_same_global_batch(stars, tmp_path):
    data = tmp_path / "s.h5"
    write_h5(stars[:80], data)
    torchrun(tmp_path, 2, data, tmp_path / "ddp", 3, 0)
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    subprocess.run([sys.executable, str(tmp_path / "rank.py"), data, tmp_path / "one", "3", "0"], env=env(),
                   check=True, capture_output=True)
    one = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    for k in r0:
        torch.testing.assert_close(r0[k], one[k], rtol=1e-3, atol=1e-4)
    h2 = json.loads((tmp_path / "ddp" / "history.json").read_text())
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    assert h2["world_size"] == 2 and h1["world_size"] == 1
    np.testing.assert_allclose(h2["val_chi2_dof"], h1["val_chi2_dof"], rtol=1e-4)
    # resume the two-rank run in one process: it continues as the single run would have
    torchrun(tmp_path, 1, data, tmp_path / "ddp", 5, 1)
    subprocess.run([sys.executable, str(tmp_path / "rank.py"), data, tmp_path / "one", "5", "1"], env=env(),
                   check=True, capture_output=True)
    h2 = json.loads((tmp_path / "ddp" / "history.json").read_text())
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())
    assert h2["epoch"] == h1["epoch"] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(h2["val_chi2_dof"], h1["val_chi2_dof"], rtol=1e-4)


EXIT_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from specae.engine.runtime import Runtime

    rt = Runtime.create("cpu", distributed=True)
    got = rt.broadcast(torch.full((4,), 7.0 + rt.rank))
    open(f"{sys.argv[1]}/rank{rt.rank}.txt", "w").write(str(got.tolist()))
    rt.broadcast(torch.ones(4))   # the process ends right after a collective
""")


def test_a_rank_that_exits_right_after_a_collective_exits_cleanly(tmp_path):
    # gloo's worker thread used to free the last collective's tensors while the interpreter was exiting,
    # aborting about a third of such runs (SIGABRT) after all their output was written
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    for attempt in range(6):
        out = tmp_path / str(attempt)
        out.mkdir()
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(script), str(out)], env=env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"attempt {attempt}: " + r.stderr[-2000:]
        assert [(out / f"rank{k}.txt").read_text() for k in range(2)] == ["[7.0, 7.0, 7.0, 7.0]"] * 2


def test_distributed_outside_torchrun_is_a_user_error(stars):
    with pytest.raises(SpecaeError, match="torchrun"):
        fit(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=1, distributed=True, progress=False))


# -- streaming training and batch jobs -----------------------------------------------------------------------
def test_streamed_training_never_holds_more_than_a_few_blocks(tmp_path, reads):
    truth = stellar_spectra(3000, seed=7, wave=WAVE)
    noisy = add_noise(truth, seed=8)
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:   # a file written by the user's own code, in blocks of 100 rows
        f["wave"] = WAVE
        for name in ("flux", "ivar"):
            f.create_dataset(name, data=getattr(noisy, name), chunks=(100, WAVE.size))
    cfg = TrainConfig(epochs=3, batch_size=32, progress=False, num_workers=0, init_rows=300, calib_rows=200)
    with pytest.warns(UserWarning, match="specae_format"):
        model, history = fit_calibrated(str(path), model_cfg=small_cfg(), cfg=cfg)
    # never more than one 100-row block read at a time, and rows are shuffled across at most 4 blocks:
    # the file is 7.5 times what the process ever holds of it
    assert max(reads) == 100 and sum(reads) >= 3 * 2700
    assert history["n_train"] + history["n_val"] == 3000
    assert history["val_chi2_dof"][-1] < history["val_chi2_dof"][0]
    from specae.denoise import denoise
    test = add_noise(stellar_spectra(50, seed=9, wave=WAVE), seed=10)
    d = denoise(model, test)
    clean = stellar_spectra(50, seed=9, wave=WAVE).flux
    assert np.sqrt(np.mean((d.flux - clean) ** 2)) < 0.5 * np.sqrt(np.mean((test.flux - clean)[~test.mask] ** 2))


def test_batch_job_over_many_files_skips_complete_outputs(stars, tmp_path, capsys):
    model = tmp_path / "model"
    fit_calibrated(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=1, batch_size=16, progress=False), out_dir=model)
    survey = tmp_path / "survey"
    survey.mkdir()
    for i in range(3):
        write_h5(stars[i * 10:(i + 1) * 10], survey / f"part{i}.h5")
    out = tmp_path / "out"
    assert main(["denoise", str(model), str(survey / "*.h5"), "-o", str(out) + "/", "--quiet"]) == 0
    first = capsys.readouterr().out
    assert "denoised 30 spectra" in first and "3 files written, 0 already complete" in first
    assert sorted(p.name for p in out.iterdir()) == ["part0.h5", "part1.h5", "part2.h5"]
    kept = (out / "part1.h5").read_bytes()
    (out / "part0.h5").unlink()
    assert main(["denoise", str(model), str(survey / "*.h5"), "-o", str(out), "--quiet"]) == 0
    assert "1 files written, 2 already complete" in capsys.readouterr().out
    assert (out / "part1.h5").read_bytes() == kept
    np.testing.assert_array_equal(read_h5(out / "part2.h5").ids, stars.ids[20:30])


def test_denoise_killed_leaves_no_output(stars, tmp_path):
    big = tmp_path / "big.h5"
    write_h5(add_noise(stellar_spectra(20000, seed=11, wave=WAVE), seed=12), big)
    model = tmp_path / "model"
    fit_calibrated(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=1, batch_size=16, progress=False), out_dir=model)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        outdir = tmp_path / f"out{int(sig)}"
        outdir.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "specae.cli", "denoise", str(model), str(big), "-o",
                                 str(outdir / "d.h5"), "--batch-size", "64"], env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list(outdir.glob(".*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        proc.send_signal(sig)
        code = proc.wait()
        assert code in (143, -signal.SIGKILL), proc.stderr.read()
        assert not (outdir / "d.h5").exists()
        if sig == signal.SIGTERM:   # unwound: the temporary file is gone too, and the user is told
            assert list(outdir.iterdir()) == [] and "terminated" in proc.stderr.read()


def test_loading_a_malicious_pickle_never_runs_it(stars, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    model = tmp_path / "model"
    fit_calibrated(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=1, batch_size=16, progress=False), out_dir=model)
    for name in ("weights.pt", "train_state.pt"):
        evil = tmp_path / f"evil_{name}"
        evil.mkdir()
        for p in model.iterdir():
            (evil / p.name).write_bytes(p.read_bytes())
        torch.save({"state": Evil(), "epoch": Evil()}, evil / name)
        with pytest.raises(SpecaeError, match=str(evil)):
            if name == "weights.pt":
                load_model(evil)
            else:
                fit(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=2, progress=False), out_dir=evil, resume=True)
        assert not marker.exists()
    # a config that names a path is not followed: unknown keys are ignored, the model loads from its own dir
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "weights": "/etc/passwd", "path": "../../x"}))
    assert load_model(model).cfg.latent_dim == 3


def test_output_write_failures_are_one_line_errors(stars, tmp_path, capsys, monkeypatch):
    import errno

    model = tmp_path / "model"
    fit_calibrated(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=1, batch_size=16, progress=False), out_dir=model)
    data = tmp_path / "s.h5"
    write_h5(stars[:5], data)
    real = os.replace
    for code, words in ((errno.ENOSPC, "space"), (errno.EROFS, "read-only"), (errno.EACCES, "ermission")):
        def failing(src, dst, code=code):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(os, "replace", failing)
        out = tmp_path / "d.h5"
        rc = main(["denoise", str(model), str(data), "-o", str(out)])
        err = capsys.readouterr().err
        monkeypatch.setattr(os, "replace", real)
        assert rc == 2 and err.startswith("specae: error: ") and err.count("\n") == 1 and words in err
        assert str(out) in err and not out.exists() and not list(tmp_path.glob(".d.h5*"))
    with h5py.File(data) as f:
        assert f["flux"].shape == (5, WAVE.size)


def test_moving_average_of_the_weights_is_what_is_evaluated_and_kept(stars, tmp_path, monkeypatch):
    import specae.engine.loop

    scores = iter([9.0, 3.0, 2.0, 1.0])   # every epoch improves: the last one is kept
    evaluated = []
    real = specae.engine.loop.evaluate

    def fake(objective, *a, **k):
        evaluated.append({n: p.detach().clone() for n, p in objective.model.named_parameters()})
        real(objective, *a, **k)
        return {"chi2_dof": next(scores), "loss": 0.0}

    monkeypatch.setattr(specae.engine.loop, "evaluate", fake)
    out = tmp_path / "m"
    model, history = fit(stars, model_cfg=small_cfg(), cfg=TrainConfig(epochs=3, batch_size=16, ema=0.9,
                                                                       progress=False), out_dir=out)
    state = torch.load(out / "train_state.pt", weights_only=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    kept = copy.deepcopy(model)
    with torch.no_grad():
        for n, avg in zip(names, state["average"]):
            dict(kept.named_parameters())[n].copy_(avg)
    kept = dict(round_weights(kept).named_parameters())                        # as fit ends: as saved
    for n, avg in zip(names, state["average"]):
        assert torch.equal(dict(model.named_parameters())[n].detach(), kept[n].detach()), n   # the average is kept
        assert torch.equal(evaluated[-1][n], avg), n                              # ... and was evaluated
    live = state["modules"]["model"]
    assert any(not torch.equal(live[n], avg) for n, avg in zip(names, state["average"]))


def test_weight_average_forgets_the_untrained_start_and_ignores_skipped_steps():
    from specae.engine.loop import _Average
    w = torch.nn.Parameter(torch.zeros(1))
    average = _Average({"m": torch.nn.Module()}, 0.999)
    average.live, average.avg = [w], [torch.zeros(1)]
    with torch.no_grad():
        w.fill_(1.0)
    taken, skipped = torch.tensor(1.0), torch.tensor(0.0)
    average.update(0, taken)                # decay 1/10 at the first step, not 0.999
    assert average.avg[0].item() == pytest.approx(0.9)
    average.update(10 ** 6, taken)          # later the configured decay: 0.9 -> 0.9 + 0.001 * 0.1
    assert average.avg[0].item() == pytest.approx(0.9001)
    average.update(10 ** 6, skipped)        # a skipped step (non-finite loss) leaves the average alone
    assert average.avg[0].item() == pytest.approx(0.9001)
