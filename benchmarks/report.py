"""One writer for every benchmark's results: JSON + a Markdown table + PNG plots, stamped with where they came from.

    write_results("quality-payne", figures, rows, command="python -m benchmarks.quality --set payne",
                  plots={"rmse": lambda fig: ...})

writes results/quality-payne.json, results/quality-payne.md and results/quality-payne-rmse.png. Every file
carries the machine (GPU name when one is used, else the CPU model), the torch version, the project's commit
(with "+dirty" when the working tree differs from it), the exact command and the UTC date. All contents are
rendered in memory first, so an exception leaves no half-written result behind.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def add_run_options(p, argv: list[str], quick: dict, default_name: str) -> None:
    """The options every CPU/GPU quality benchmark shares: --quick (the sizes in `quick`, each still
    overridable), --device, --threads, --seed, --name and --results-dir."""
    p.add_argument("--quick", action="store_true", help="tiny sizes: " + ", ".join(f"{k}={v}" for k, v in quick.items()))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help=f"results file name (default {default_name})")
    p.add_argument("--results-dir", default=None, help="default benchmarks/results")
    if "--quick" in argv:
        p.set_defaults(**quick)


def add_fold_options(p, what: str, epochs: int | None, epochs_help: str) -> None:
    """The options of the real-data benchmarks that train one model per fold: --folds (of `what`), --epochs
    (default `epochs`), --latent-dim (K of the VAE and the PCA) and --pixels (a window of the grid)."""
    p.add_argument("--folds", type=int, default=3, help=f"folds of {what}: each trains on the others'")
    p.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    p.add_argument("--latent-dim", type=int, default=6, help="K: latents of the VAE, components of the PCA")
    p.add_argument("--pixels", default=None, help='a window of the grid: "START:STOP" or "N" central pixels')


def start(argv: list[str] | None, parse: Callable) -> tuple[float, list[str], object]:
    """What every benchmark's main opens with: (the start time, argv (default the command line's), the parsed
    arguments with args.device set by `run_device`)."""
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    args.device = run_device(args)
    return started, argv, args


def run_device(args) -> str:
    """Apply --threads; returns the device --device names ("auto": CUDA where there is one)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str | None = None) -> dict:
    """Where the figures were measured: `device` is the torch device the run used ("cuda", "cpu" or None)."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    used_gpu = gpu is not None and str(device).startswith("cuda")
    return {"name": gpu if used_gpu else cpu_model(), "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "gpu": gpu,
            "device": str(device) if device is not None else None, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def git_commit() -> str:
    """Short commit of the checkout, "+dirty" when files differ from it (results/, which runs write, and the
    peers folder .peers/ aside);
    $SPECAE_COMMIT when set (a copy of the tree without .git, e.g. on a GPU machine); else "unknown"."""
    if os.environ.get("SPECAE_COMMIT"):
        return os.environ["SPECAE_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!benchmarks/results",
                                 ":!benchmarks/.peers"], cwd=ROOT, capture_output=True, text=True, check=True,
                                timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if status.strip() else "")


def write_results(name: str, figures: dict, table_rows: list[dict], command: str,
                  plots: dict[str, Callable] | None = None, results_dir: Path | str | None = None,
                  device: str | None = None, notes: list[str] | None = None,
                  tables: dict[str, list[dict]] | None = None) -> dict[str, Path]:
    """Write results/<name>.json, results/<name>.md and results/<name>-<plot>.png; return their paths.

    figures: everything measured (JSON-serialisable; numpy scalars and arrays are converted, NaN/inf become
    null). table_rows: one dict per table row, same keys in the same order in every row (missing cells
    print as "–"). plots: {plot name: function drawing on a fresh matplotlib Figure}. notes: lines printed
    under the tables (what the columns mean, caveats). tables: {title: rows} further tables, each under its
    title after the main one (figures that would make the main table too wide to read).
    """
    out_dir = Path(results_dir) if results_dir is not None else RESULTS
    stamp = {"machine": machine(device), "commit": git_commit(), "command": command,
             "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    payload = {"name": name, **stamp, "figures": figures, "table": table_rows, "tables": tables or {},
               "notes": notes or []}
    text_json = json.dumps(_plain(payload), indent=1, allow_nan=False)
    pngs = {f"{name}-{key}.png": _render(draw) for key, draw in (plots or {}).items()}
    text_md = _markdown(name, stamp, table_rows, notes or [], list(pngs), tables or {})

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for filename, content in [(f"{name}.json", text_json.encode()), (f"{name}.md", text_md.encode()),
                              *pngs.items()]:
        path = out_dir / filename
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(content)
        os.replace(tmp, path)
        written[filename] = path
    return written


def _render(draw: Callable) -> bytes:
    """PNG bytes of what `draw(fig)` puts on a fresh Figure (no pyplot state, so no display is needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _plain(value):
    """JSON-ready copy: numpy types to Python, non-finite floats to None, paths to str."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _cell(value) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value).replace("|", "\\|")


def _table(rows: list[dict]) -> list[str]:
    """Markdown lines of a table (with a blank line after it); none for no rows."""
    if not rows:
        return []
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            *("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows), ""]


def _markdown(name: str, stamp: dict, rows: list[dict], notes: list[str], pngs: list[str],
              tables: dict[str, list[dict]]) -> str:
    m = stamp["machine"]
    lines = [f"# {name}", "",
             f"- machine: {m['name']}" + ("" if m["gpu"] and m["name"] == m["gpu"] else
                                          f" ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"),
             f"- torch {m['torch']}, Python {m['python']}",
             f"- commit: `{stamp['commit']}`",
             f"- command: `{stamp['command']}`",
             f"- date: {stamp['date']}", ""]
    lines += _table(rows)
    for title, extra in tables.items():
        lines += [f"## {title}", "", *_table(extra)]
    lines += [f"- {note}" for note in notes]
    if notes:
        lines.append("")
    lines += [f"![{png}]({png})" for png in pngs]
    return "\n".join(lines).rstrip() + "\n"
