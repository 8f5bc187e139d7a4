"""Speed and scale: training and denoising throughput, precision, torch.compile, peak memory, cost
growth with N (streamed from HDF5) and with npix, GPU busy time, and spender timed on the same data.

    python -m benchmarks.speed --quick                 # CPU, a few minutes
    python -m benchmarks.speed --device cuda           # GPU (part of benchmarks/gpu.sh)

Every figure is measured in this run; ratios to spender come from the same process, device and batch.
Steps are timed on batches already on the device (the step itself), then whole epochs streamed from
HDF5 files by DataLoader workers (the pipeline), with the GPU's busy fraction sampled by nvidia-smi.
"""

from __future__ import annotations

import argparse
import queue as queue_module
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.peers import import_spender, spender_unavailable
from benchmarks.report import write_results
from specae.calibration import Calibration
from specae.denoise import predict_batch
from specae.engine import Runtime, StepContext
from specae.models import ModelConfig, SpectrumVAE
from specae.train import TrainConfig, VAEObjective, fit

SDSS_NPIX, APOGEE_NPIX = 3921, 7214
GRIDS = {"quick": dict(npix=(500, 2000), batch=(64, 256), stream_n=(1000, 4000, 16000), stream_npix=500,
                       denoise_n=4000, steps=5),
         "gpu": dict(npix=(1000, SDSS_NPIX, APOGEE_NPIX), batch=(512, 4096), stream_n=(10_000, 100_000, 300_000),
                     stream_npix=SDSS_NPIX, denoise_n=200_000, steps=30),
         "dry": dict(npix=(300,), batch=(64,), stream_n=(1000, 2000), stream_npix=300, denoise_n=300, steps=2)}


def log(*parts) -> None:
    """Progress on stderr, so a long run shows where it is."""
    print("speed:", *parts, file=sys.stderr, flush=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device) -> float:
    """MB: the CUDA allocator's peak since the last reset, or this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def toy_model(npix: int, decoder: str, device, latent: int = 6) -> SpectrumVAE:
    """A VAE of the default size on a log grid (random PCA basis: speed does not depend on the values)."""
    wave = 10 ** (3.55 + 1e-4 * np.arange(npix))
    model = SpectrumVAE(ModelConfig(npix=npix, latent_dim=latent, decoder=decoder), wave)
    with torch.no_grad():
        model.basis.normal_(0, npix ** -0.5)
        model.decoder.mean.fill_(1.0)
        model.decoder.linear.normal_(0, 0.01)
    return model.to(device)


def toy_batch(n: int, npix: int, device, seed: int = 0) -> dict:
    """Model-space spectra on the device: a smooth continuum, lines, noise, 5 % of the pixels masked."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.linspace(0, 1, npix)
    coeff = torch.randn(n, 3, generator=g)
    flux = 1 + 0.1 * coeff[:, :1] * x + 0.05 * coeff[:, 1:2] * torch.sin(40 * x) + 0.02 * torch.randn(n, npix, generator=g)
    ivar = torch.full((n, npix), 2500.0) * (torch.rand(n, npix, generator=g) > 0.05)
    return {"x": flux.to(device), "ivar": ivar.to(device)}


def time_train_steps(npix, batch, decoder, precision, compiled, device, steps) -> dict:
    """spectra/s of VAEObjective.train_step (forward, backward, fused AdamW) on device-resident batches."""
    model = toy_model(npix, decoder, device)
    obj = VAEObjective(model, TrainConfig(batch_size=batch))
    rt = Runtime(device, precision)
    trained = torch.compile(model) if compiled else model
    opts = obj.optimizers()
    scheds = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0) for k, o in opts.items()}
    ctx = StepContext(rt, {"model": trained}, opts, scheds, clip=5.0)
    data = toy_batch(batch, npix, device)
    t_compile = time.perf_counter()
    for _ in range(3):                       # warm-up (and compilation)
        obj.train_step(data, ctx)
    sync(device)
    t_compile = time.perf_counter() - t_compile
    reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        obj.train_step(data, ctx)
    sync(device)
    dt = time.perf_counter() - t0
    return {"spectra_per_s": steps * batch / dt, "ms_per_step": 1000 * dt / steps, "peak_mb": peak_memory(device),
            "warmup_s": t_compile}


@torch.no_grad()
def time_inference(npix, batch, decoder, precision, device, steps) -> dict:
    """spectra/s of the denoising kernel (encoder mean decoded: one draw) and of the default denoising: the
    Laplace posterior and the error model's exact posterior of every pixel (specae.errormodel)."""
    model = toy_model(npix, decoder, device).eval()
    rt = Runtime(device, precision)
    data = toy_batch(batch, npix, device)
    out = {}

    def kernel():
        mean, _ = model.encode(data["x"], data["ivar"])
        return model.decode(mean)

    from specae.data.tensors import Batch
    b = Batch(data["x"], data["ivar"])
    cal = Calibration(smooth_fraction=0.5, smooth_length=30.0, tail_spread=1.0)
    for name, fn in (("kernel_1_draw", kernel), ("laplace", lambda: predict_batch(model, b, cal, "laplace", rt=rt))):
        with rt.autocast():
            fn()
            sync(device)
            reset_peak(device)
            reps = steps if name == "kernel_1_draw" else max(2, steps // 4)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            sync(device)
        dt = time.perf_counter() - t0
        out[name] = {"spectra_per_s": reps * batch / dt, "peak_mb": peak_memory(device)}
    return out


def time_spender(npix, batch, device, steps) -> dict:
    """spender's SpectrumAutoencoder, its loss and Adam, timed like specae's step, and its inference."""
    spender = import_spender()
    wave = torch.as_tensor(10 ** (3.55 + 1e-4 * np.arange(npix)), dtype=torch.float32)
    rest = torch.cat([2 * wave[:1] - wave[1:2], wave, 2 * wave[-1:] - wave[-2:-1]])
    inst = spender.Instrument(wave)
    model = spender.SpectrumAutoencoder(inst, rest, n_latent=6).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = toy_batch(batch, npix, device)
    z = torch.zeros(batch, device=device)

    def step():
        loss = model.loss(data["x"], data["ivar"], instrument=model.encoder.instrument, z=z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out = {}
    for name, fn, reps in (("train", step, steps), ("inference", None, steps)):
        if fn is None:
            model.eval()

            def fn():
                with torch.no_grad():
                    model(data["x"], instrument=model.encoder.instrument, z=z)
        for _ in range(3):
            fn()
        sync(device)
        reset_peak(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        out[name] = {"spectra_per_s": reps * batch / (time.perf_counter() - t0), "peak_mb": peak_memory(device)}
    return out


def write_stream_file(path: Path, n: int, npix: int, seed: int = 0) -> None:
    """n toy spectra (flux, ivar, mask) in the specae format, written in blocks of 50000 rows."""
    import h5py
    from specae.data.hdf5 import FORMAT_VERSION, default_chunk_rows

    rows = default_chunk_rows(npix)
    wave = 10 ** (3.55 + 1e-4 * np.arange(npix))
    with h5py.File(path, "w") as f:
        f.attrs["specae_format"] = FORMAT_VERSION
        f["wave"] = wave
        for name in ("flux", "ivar"):
            f.create_dataset(name, (n, npix), np.float32, chunks=(min(rows, n), npix))
        for a in range(0, n, 50_000):
            part = toy_batch(min(50_000, n - a), npix, torch.device("cpu"), seed + a)
            f["flux"][a:a + len(part["x"])] = part["x"].numpy()
            f["ivar"][a:a + len(part["x"])] = part["ivar"].numpy()


class GpuBusy:
    """Samples the GPU's utilisation with nvidia-smi every 100 ms while it is entered; mean in `.value`."""

    def __enter__(self):
        self.value = None
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "100"], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            lines = self.proc.communicate()[0].split()
            values = [float(v) for v in lines if v.replace(".", "").isdigit()]
            self.value = float(np.mean(values[1:-1])) if len(values) > 2 else None


def _stream_one(path: str, npix: int, batch: int, device: str, workers: int, precision: str) -> dict:
    """Two epochs streamed from `path` in this (fresh) process: the second epoch's time, and peak RSS."""
    import resource

    cfg = TrainConfig(epochs=2, batch_size=batch, device=device, precision=precision, num_workers=workers,
                      progress=False, init_rows=2000, calib_rows=500, patience=None, val_fraction=0.02)
    _, hist = fit(path, model_cfg=ModelConfig(npix=npix, latent_dim=6), cfg=cfg)
    return {"n_train": hist["n_train"], "epoch_seconds": hist["train_seconds"][-1],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None}


def _child(queue, fn, *args):
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as e:       # reported to the parent, which raises it
        queue.put(("error", f"{type(e).__name__}: {e}"))


def _in_fresh_process(ctx, fn, *args):
    """fn(*args) in a new non-daemonic process (its DataLoader may start workers of its own)."""
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, *args))
    proc.start()
    while True:
        try:
            status, value = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                status, value = "error", f"exit code {proc.exitcode}"
                break
    proc.join()
    if status != "ok":
        raise RuntimeError(f"streamed-epoch child process failed: {value}")
    return value


def time_streamed_epochs(n_values, npix, batch, device, workers, precision, tmp: Path) -> list[dict]:
    """Seconds per epoch of streamed training against N (2 epochs, the second timed), each N in a fresh
    process so its peak memory is its own; the GPU's busy fraction sampled meanwhile."""
    import multiprocessing

    rows = []
    ctx = multiprocessing.get_context("spawn")
    for n in n_values:
        log("streamed epochs, N =", n)
        path = tmp / f"stream-{n}.h5"
        write_stream_file(path, n, npix)
        with GpuBusy() as busy:
            r = _in_fresh_process(ctx, _stream_one, str(path), npix, batch, str(device), workers, precision)
        rows.append({"n": n, **r, "spectra_per_s": r["n_train"] / r["epoch_seconds"], "gpu_busy_pct": busy.value})
        path.unlink()
    return rows


def time_denoise_file(n, npix, device, tmp: Path, precision: str) -> dict:
    """End to end: an HDF5 file of n spectra denoised into another, block by block (specae.results.map_h5)."""
    from specae.denoise import denoise
    from specae.results import map_h5

    src, dst = tmp / "denoise-in.h5", tmp / "denoise-out.h5"
    write_stream_file(src, n, npix)
    model = toy_model(npix, "mlp", device).eval()
    t0 = time.perf_counter()
    map_h5(src, dst, lambda part: {"flux": denoise(model, part, precision=precision).flux}, block_rows=65536)
    dt = time.perf_counter() - t0
    src.unlink()
    dst.unlink()
    return {"n": n, "npix": npix, "seconds": dt, "spectra_per_s": n / dt, "seconds_per_million": 1e6 * dt / n}


def fitted_slope(x, y) -> float:
    """d log y / d log x by least squares (1 = linear growth)."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="CPU-sized grid (a few minutes)")
    p.add_argument("--dry", action="store_true", help="toy grid: every part once, a check that the script runs")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: train,infer,spender,compile,stream,denoise")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers when streaming")
    p.add_argument("--name", default=None)
    p.add_argument("--results-dir", default=None)
    args = p.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    grid = GRIDS["dry" if args.dry else "quick" if args.quick or device.type == "cpu" else "gpu"]
    skip = set(filter(None, args.skip.split(",")))
    precisions = ("fp32", "bf16") if device.type == "cuda" else ("fp32",)
    figures, rows = {"device": str(device), "grid": grid}, []

    if "train" not in skip or "infer" not in skip:
        for npix in grid["npix"]:
            for decoder in ("mlp", "conv"):
                for batch in grid["batch"]:
                    for prec in precisions:
                        row = {"part": "step", "npix": npix, "decoder": decoder, "batch": batch, "precision": prec}
                        log(row)
                        if "train" not in skip:
                            t = time_train_steps(npix, batch, decoder, prec, False, device, grid["steps"])
                            row |= {"train_per_s": t["spectra_per_s"], "train_peak_mb": t["peak_mb"]}
                        if "infer" not in skip:
                            inf = time_inference(npix, batch, decoder, prec, device, grid["steps"])
                            row |= {f"{k}_per_s": v["spectra_per_s"] for k, v in inf.items()}
                        rows.append(row)
    if "compile" not in skip and device.type == "cuda":
        for decoder in ("mlp", "conv"):
            t = time_train_steps(SDSS_NPIX, grid["batch"][-1], decoder, "bf16", True, device, grid["steps"])
            rows.append({"part": "step", "npix": SDSS_NPIX, "decoder": decoder, "batch": grid["batch"][-1],
                         "precision": "bf16+compile", "train_per_s": t["spectra_per_s"], "train_peak_mb": t["peak_mb"],
                         "compile_s": t["warmup_s"]})
    why_not = spender_unavailable()
    figures["spender"] = why_not or "installed"
    if "spender" not in skip and why_not is None:
        for npix in grid["npix"]:
            batch = grid["batch"][-1]
            sp = time_spender(npix, batch, device, grid["steps"])
            mine = next((r for r in rows if r["npix"] == npix and r["decoder"] == "mlp" and r["batch"] == batch
                         and r["precision"] == "fp32"), {})
            rows.append({"part": "spender", "npix": npix, "decoder": "spender", "batch": batch, "precision": "fp32",
                         "train_per_s": sp["train"]["spectra_per_s"], "train_peak_mb": sp["train"]["peak_mb"],
                         "kernel_1_draw_per_s": sp["inference"]["spectra_per_s"],
                         "train_ratio_specae_to_spender": mine.get("train_per_s", np.nan) / sp["train"]["spectra_per_s"],
                         "infer_ratio_specae_to_spender":
                             mine.get("kernel_1_draw_per_s", np.nan) / sp["inference"]["spectra_per_s"]})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 1)
        if "stream" not in skip:
            batch = grid["batch"][-1]
            prec = precisions[-1]
            stream = time_streamed_epochs(grid["stream_n"], grid["stream_npix"], batch, device, workers, prec, tmp)
            figures["streamed_epochs"] = stream
            figures["epoch_time_slope_in_n"] = fitted_slope([r["n_train"] for r in stream],
                                                            [r["epoch_seconds"] for r in stream])
            rows += [{"part": "streamed epoch", "npix": grid["stream_npix"], "batch": batch, "precision": prec,
                      "n": r["n"], "train_per_s": r["spectra_per_s"], "epoch_s": r["epoch_seconds"],
                      "peak_rss_mb": r["peak_rss_mb"], "gpu_busy_pct": r["gpu_busy_pct"]} for r in stream]
        if "denoise" not in skip:
            d = time_denoise_file(grid["denoise_n"], grid["stream_npix"], device, tmp, precisions[-1])
            figures["denoise_file"] = d
            rows.append({"part": "denoise file (laplace)", "npix": d["npix"], "n": d["n"], "precision": precisions[-1],
                         "end_to_end_per_s": d["spectra_per_s"], "s_per_million": d["seconds_per_million"]})
    steps = [r for r in rows if r["part"] == "step" and r["decoder"] == "mlp" and "train_per_s" in r
             and r["batch"] == grid["batch"][-1] and r["precision"] == "fp32"]
    if len(steps) > 1:
        figures["step_time_slope_in_npix"] = fitted_slope([r["npix"] for r in steps],
                                                          [1 / r["train_per_s"] for r in steps])
    figures["rows"] = rows
    name = args.name or f"speed-{'gpu' if device.type == 'cuda' else 'cpu'}"
    notes = ["train_per_s: spectra per second through VAEObjective.train_step (forward, backward, fused AdamW) on "
             "batches already on the device; streamed epoch: the whole pipeline from HDF5 (DataLoader workers, "
             "pinned memory, on-device normalisation).",
             "kernel_1_draw: encoder mean decoded (no refinement); laplace: the default denoising (Gauss-Newton "
             "with the exact Jacobian, then the error model's exact posterior of every pixel, outlier pass included).",
             "Ratios to spender: same process, device, npix and batch, fp32, its own loss and Adam.",
             f"spender: {figures['spender']}."]
    return write_results(name, figures, rows, " ".join(["python -m benchmarks.speed", *argv]),
                         {"scaling": lambda fig: plot_scaling(fig, rows)}, args.results_dir, str(device), notes)


def plot_scaling(fig, rows) -> None:
    """Training throughput against npix (per decoder) and streamed epoch time against N, log-log."""
    a, b = fig.subplots(1, 2)
    for dec in ("mlp", "conv", "spender"):
        pts = sorted({(r["npix"], r["train_per_s"]) for r in rows if r.get("decoder") == dec and "train_per_s" in r
                      and r["part"] in ("step", "spender") and r["precision"] == "fp32"})
        if pts:
            best = {}
            for n, v in pts:
                best[n] = max(best.get(n, 0), v)
            a.loglog(list(best), list(best.values()), "o-", label=dec)
    a.set_xlabel("npix")
    a.set_ylabel("training spectra / s")
    a.legend()
    st = [r for r in rows if r["part"] == "streamed epoch"]
    if st:
        n = np.array([r["n"] for r in st], float)
        s = np.array([r["epoch_s"] for r in st], float)
        b.loglog(n, s, "o-", label=f"slope {fitted_slope(n, s):.2f}")
        b.set_xlabel("N spectra (streamed)")
        b.set_ylabel("seconds per epoch")
        b.legend()


if __name__ == "__main__":
    main()
