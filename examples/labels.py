"""Stellar labels with sigmas from a VAE's latents: LAMOST spectra and the LAMOST DR1 catalogue.

    python examples/labels.py [--tiny] [-o OUT_DIR]

Reads the LAMOST spectra in ../shared/data/lamost (beside the repository) with the catalogue's Teff,
log g and [Fe/H], trains a small VAE on all of them (labels are not needed for that), then fits a
label regressor (specae.regress.LabelRegressor) from the latent posteriors of two thirds of the
catalogue stars to their labels, and predicts the other third with calibrated 1-sigma errors.
--tiny (what CI runs) uses 60 spectra and 2 epochs.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from specae.data.readers import read_many
from specae.models.config import ModelConfig
from specae.pipeline import Autoencoder
from specae.regress import LabelRegressor, RegressorConfig, label_scores
from specae.train import TrainConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LABELS = ["teff", "logg", "feh"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="60 spectra, 2 epochs (CI)")
    p.add_argument("-o", "--output", default="labels-example", help="output directory (default labels-example)")
    args = p.parse_args()
    files = sorted((DATA / "lamost").glob("spec-*.fits.gz"))
    if not files:
        print(f"no LAMOST files in {DATA / 'lamost'}: nothing to do")
        return 0
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    # the catalogue's labels are matched by file name; spectra it does not list get NaN
    spectra = read_many(files[:60] if args.tiny else files, catalogue=DATA / "lamost" / "lamost_dr1_catalogue.csv",
                        labels=LABELS).drop_empty()
    train, val = spectra.split((0.85, 0.15), seed=0)
    ae = Autoencoder(ModelConfig(latent_dim=4),
                     TrainConfig(epochs=2 if args.tiny else 200, max_minutes=0.2 if args.tiny else 5, progress=False))
    ae.fit(train, val, out_dir=out / "model", overwrite=True)

    # the catalogue stars, dealt into a part to fit the regressor on and a part to predict
    stars = spectra.select(np.flatnonzero(np.isfinite(spectra.labels["teff"])))
    fit_on, test = stars.split((0.67, 0.33), seed=0)
    reg = LabelRegressor(RegressorConfig(kind="ridge", progress=False)).fit(ae.model_, fit_on, LABELS)
    pred = reg.predict(ae.model_, test)          # mean and sigma per label, the latent posterior's spread included
    for name, s in label_scores(pred, test.labels).items():
        print(f"{name}: {s['n']} test stars, R^2 {s['r2']:.2f}, median |error| {s['mae_median']:.3g}, "
              f"coverage {100 * s['coverage_1sigma']:.1f} % inside +-1 sigma (68.3 if calibrated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
