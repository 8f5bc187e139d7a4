"""`specae repeats`: validate a model on repeat observations of the same objects (specae.repeats)."""

from __future__ import annotations

from specae.cli import non_negative_int, positive_int


def _repeats(args) -> None:
    from specae.baselines import WeightedPCA
    from specae.cli.model import load_for_inference, output_attrs
    from specae.errors import about
    from specae.inputs import read_all
    from specae.repeats import STATS, repeats

    model = load_for_inference(args)
    with about(args.data):
        spectra = read_all(args.data, model.wave)
        check = repeats(model, spectra, args.group, velocity=args.velocity, redshift=args.redshift,
                        baseline=lambda s: WeightedPCA(args.pca_components).fit(s), degree=args.degree,
                        batch_size=args.batch_size, posterior=args.posterior, precision=args.precision)
    check.write(args.output, {**output_attrs(args, model, "specae repeats"), "data": str(args.data),
                              "flux_unit": spectra.meta["flux_unit"], "frame": spectra.meta["frame"],
                              "group": args.group, "velocity": args.velocity, "redshift": args.redshift,
                              "degree": args.degree, "baseline": f"WeightedPCA({args.pca_components})"})

    per, overall = check.per_object, check.overall
    rows = [(name, n, *(per[k][m] for k in STATS)) for m, (name, n) in enumerate(zip(check.objects, check.n_obs))]
    rows.append((f"all ({len(check.objects)} objects)", check.n_obs.sum(), *(overall[k] for k in STATS)))
    width = max(len(r[0]) for r in rows)
    print(f"{'object':<{width}}  visits  noise left: specae    PCA    raw  spread  in +-1  in +-2")
    for name, n, ae, pca, raw, spread, in1, in2 in rows:
        print(f"{name:<{width}}  {n:6d}  {ae:18.2f} {pca:6.2f} {raw:6.2f}  {spread:6.2f}  {100 * in1:5.1f}%  "
              f"{100 * in2:5.1f}%")
    print(f"{len(check.pair_object)} pairs written to {args.output}; noise left is 1 at best (the raw pair is its "
          "floor); spread 1 and 68.3/95.4 % in +-1/+-2 when sigma is right")


def register(sub) -> None:
    from specae.cli.model import add_runtime_options

    r = sub.add_parser("repeats", help="compare each observation, denoised, with the raw other observations of "
                                       "the same object (noise left, and whether sigma is right)")
    r.add_argument("model", metavar="MODEL")
    r.add_argument("data", metavar="DATA", help="spectra, with a label naming the object of each: an HDF5 file, or "
                                                "survey FITS files (a quoted glob), read onto the model's grid")
    r.add_argument("--group", required=True, metavar="LABEL",
                   help="label whose value names the object (e.g. OBJID of APOGEE visits)")
    frame = r.add_mutually_exclusive_group()
    frame.add_argument("--velocity", metavar="LABEL", default=None,
                       help="radial velocity (km/s) that puts each observation on the rest frame (apVisit: VRAD)")
    frame.add_argument("--redshift", metavar="LABEL", default=None, help="redshift label, instead of a velocity")
    r.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    r.add_argument("--degree", type=non_negative_int, default=3, metavar="D",
                   help="degree of the smooth multiplicative match between observations (default 3)")
    r.add_argument("--pca-components", type=positive_int, default=6, metavar="K",
                   help="components of the weighted-PCA baseline fitted on DATA (default 6)")
    r.add_argument("--batch-size", type=positive_int, default=None, metavar="B")
    r.add_argument("--posterior", choices=("laplace", "decoder", "encoder"), default="laplace")
    add_runtime_options(r)
    r.set_defaults(func=_repeats)
