"""The benchmark result tables as pages: benchmarks/results/*.md (and the PNGs they show) are copied into
docs/results/ when the build starts, so that the docs show the files the benchmark scripts wrote, as they are,
and their links to each other resolve. docs/results/ is a build product (ignored by git); a table removed from
benchmarks/results/ leaves it too.
"""

import shutil
from pathlib import Path


def copy_results(app):
    source = Path(app.srcdir).parent / "benchmarks" / "results"
    target = Path(app.srcdir) / "results"
    wanted = {p.name: p for p in source.iterdir() if p.suffix in (".md", ".png")}
    target.mkdir(exist_ok=True)
    for old in target.iterdir():
        if old.name not in wanted:
            old.unlink()
    for name, path in wanted.items():
        copy = target / name
        if not copy.exists() or copy.read_bytes() != path.read_bytes():   # unchanged files keep their mtime
            shutil.copyfile(path, copy)


def setup(app):
    app.connect("builder-inited", copy_results)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
