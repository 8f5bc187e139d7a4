"""Regenerate the small bundled synthetic data set in this folder: python data/make_default.py"""

from pathlib import Path

from specae.data.synthetic import write_default_data

if __name__ == "__main__":
    for path in write_default_data(Path(__file__).parent):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
