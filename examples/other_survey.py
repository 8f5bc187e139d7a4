"""A model trained on one survey, checked on another and recalibrated for it, with the specae CLI.

    python examples/other_survey.py [--tiny] [-o OUT_DIR]

SDSS spectra (../shared/data/sdss) train a model; LAMOST spectra (../shared/data/lamost), read onto
the model's wavelength grid, then test it. `specae heldout` hides each valid pixel in turn, predicts
it from the rest of its spectrum and counts how often the measurement falls inside the predicted
+-1 sigma: an error model fitted on SDSS need not hold on LAMOST. `specae calibrate` refits the error
model (not the network) on half of the LAMOST spectra, and `specae heldout` checks the new model on
the other half. Each step is the command a user would type; --tiny (what CI runs) trains 2 epochs
and uses 16 LAMOST spectra.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def specae(*words) -> str:
    """Run `specae WORDS...` (the installed CLI of this interpreter); its output, or exit on its one-line error."""
    r = subprocess.run([sys.executable, "-m", "specae.cli", *map(str, words)], capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr.strip())
    return r.stdout


def coverage(heldout_output: str) -> float:
    """The +-1 sigma percentage of `specae heldout`'s summary line."""
    return float(re.search(r"([\d.]+) % inside \+-1 sigma", heldout_output).group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="2 epochs, 16 LAMOST spectra (CI)")
    p.add_argument("-o", "--output", default="other-survey-example", help="output directory")
    args = p.parse_args()
    sdss, lamost = sorted((DATA / "sdss").glob("*.fits")), sorted((DATA / "lamost").glob("spec-*.fits.gz"))
    if not sdss or not lamost:
        print(f"no SDSS or LAMOST files in {DATA}: nothing to do")
        return 0
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    lamost = lamost[:16] if args.tiny else lamost
    half_a, half_b = lamost[0::2], lamost[1::2]

    specae("convert", *sdss, "-o", out / "sdss.h5")
    budget = ["--epochs", "2", "--max-minutes", "0.2"] if args.tiny else ["--max-minutes", "5"]
    specae("train", out / "sdss.h5", "-o", out / "model", "--overwrite", "--quiet", *budget)
    before = coverage(specae("heldout", out / "model", *half_b, "-o", out / "lamost_before.h5"))
    specae("calibrate", out / "model", *half_a, "-o", out / "model_lamost")
    after = coverage(specae("heldout", out / "model_lamost", *half_b, "-o", out / "lamost_after.h5"))
    print(f"LAMOST held-out pixels inside +-1 sigma (68.3 % if calibrated): SDSS error model {before:.1f} %, "
          f"recalibrated on {len(half_a)} LAMOST spectra {after:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
