"""Training and denoising throughput of this checkout against an earlier commit, same model and data.

    python -m benchmarks.before_after --before e6c4d44       # the last commit before the training engine

The earlier commit is checked out into a temporary git worktree and both run the same script in fresh
processes on the same CPU threads: `fit` for 1 and for 5 epochs (the difference is 4 epochs of training,
free of model building and calibration) and `denoise` of held-out spectra, on synthetic stars from the
bundled generator. Only the public API both commits share is used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from benchmarks.report import ROOT, write_results

SCRIPT = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(int(sys.argv[1]))
    from specae.data.synthetic import default_dataset
    from specae.denoise import denoise
    from specae.models.config import ModelConfig
    from specae.train import TrainConfig, fit
    n, n_test, batch = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    noisy, _ = default_dataset("stellar", n=n + n_test, seed=7)
    train, val = noisy[:n].split((0.9, 0.1), seed=0)
    test = noisy[n:]
    out = {"npix": noisy.npix, "n_train": len(train)}
    for epochs in (1, 5):
        t0 = time.perf_counter()
        model, _ = fit(train, val, ModelConfig(npix=noisy.npix, latent_dim=6),
                       TrainConfig(epochs=epochs, batch_size=batch, patience=100, progress=False))
        out[f"fit_{epochs}_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    denoise(model, test)
    out["denoise_s"] = time.perf_counter() - t0
    print("RESULT" + json.dumps(out))
""")


def run(tree: Path, threads: int, n: int, n_test: int, batch: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(threads), str(n), str(n_test), str(batch)], cwd=tree,
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{r.stderr[-2000:]}")
    res = json.loads(r.stdout.split("RESULT", 1)[1])
    epoch_s = (res["fit_5_s"] - res["fit_1_s"]) / 4
    return {**res, "epoch_s": epoch_s, "train_per_s": res["n_train"] / epoch_s, "denoise_per_s": n_test / res["denoise_s"]}


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.before_after", description=__doc__.splitlines()[0])
    p.add_argument("--before", default="e6c4d44", help="the earlier commit (default: before the training engine)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=3000, help="training spectra")
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--results-dir", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.before], cwd=ROOT, check=True)
        try:
            before = run(old, args.threads, args.n, args.n_test, args.batch)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)
    after = run(ROOT, args.threads, args.n, args.n_test, args.batch)
    rows = [{"code": f"before ({args.before})", **{k: before[k] for k in ("epoch_s", "train_per_s", "denoise_per_s")}},
            {"code": "this checkout", **{k: after[k] for k in ("epoch_s", "train_per_s", "denoise_per_s")}},
            {"code": "ratio after/before", "epoch_s": after["epoch_s"] / before["epoch_s"],
             "train_per_s": after["train_per_s"] / before["train_per_s"],
             "denoise_per_s": after["denoise_per_s"] / before["denoise_per_s"]}]
    notes = [f"{after['n_train']} training spectra of {after['npix']} px (synthetic stars), MLP decoder, latent 6, "
             f"batch {args.batch}, {args.threads} CPU thread(s); denoise of {args.n_test} held-out spectra with each "
             "commit's default posterior (before: Laplace with 64 draws through central differences; after: "
             "exact Jacobians, propagated without draws)."]
    return write_results("before-after-cpu", {"before": before, "after": after, "options": vars(args)}, rows,
                         " ".join(["python -m benchmarks.before_after", *argv]), results_dir=args.results_dir,
                         device="cpu", notes=notes)


if __name__ == "__main__":
    main()
