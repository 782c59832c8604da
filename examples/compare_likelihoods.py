#!/usr/bin/env python
"""Compare likelihood families p(x|z): one VAE per family, same data, same architecture and budget.

A thin script over :func:`pyro_vae.compare`, the function behind ``pyro-vae compare``: it trains
one VAE per family (everything but the family held equal), evaluates each by importance sampling,
prints the comparison table and writes ``comparison.md``, ``.csv``, ``.json`` and ``.png`` (plus a
run folder ``<family>/seed-<s>/`` per family) into ``--out``. The ranking is the library's:
families are grouped by the data they are scored on (the 256 gray levels, binarized pixels, or a
continuous density) and ranked by bits per dimension only within a group.

    python examples/compare_likelihoods.py --data-dir ~/data --families bernoulli,gaussian,discretized-logistic
"""

import argparse
from pathlib import Path

import pyro_vae


def main(args):
    comparison = pyro_vae.compare(
        out=args.out,
        likelihoods=args.families.split(","),  # an unknown name raises UserError listing the choices
        seeds=args.seeds,
        eval_samples=args.samples,
        eval_subset=args.subset,
        overwrite=args.overwrite,  # by default a finished run with the same settings is reused
        progress=print,  # one line per family: its training, then its score
        # the settings shared by every family (any field of pyro_vae.Config)
        dataset=args.dataset,
        data_dir=args.data_dir,
        z_dim=args.z_dim,
        hidden=args.hidden,
        epochs=args.epochs,
        seed=0,
    )
    print()
    print(comparison.markdown())
    for key, kind, rows in comparison.groups():  # the same ranking, as Python objects
        print(f"best on {key}: {rows[0]['family']}")
    print(f"wrote {Path(args.out) / 'comparison.md'}, .csv, .json and .png")
    return comparison


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default="bernoulli,gaussian,discretized-logistic",
                   help="comma-separated likelihood names")  # fmt: skip
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None, help="folder holding the data [default: $PYRO_VAE_DATA]")
    p.add_argument("--z-dim", type=int, default=20)
    p.add_argument("--hidden", type=lambda s: tuple(int(h) for h in s.split(",")), default=(400,),
                   help="hidden layer widths, comma-separated")  # fmt: skip
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=1, help="seeds per family (mean ± std over them)")
    p.add_argument("--samples", type=int, default=1000, help="importance samples per test image")
    p.add_argument("--subset", type=int, default=1000, help="evaluate on the first N test images")
    p.add_argument("--out", default="runs/compare-likelihoods")
    p.add_argument("--overwrite", action="store_true", help="retrain the runs already in --out")
    p.add_argument("--smoke", action="store_true", help="a few seconds' run on the bundled 8x8 digits (for CI)")
    args = p.parse_args()
    if args.smoke:
        args.dataset, args.hidden, args.epochs, args.samples, args.subset = "digits", (32,), 1, 10, 50
    try:
        main(args)
    except pyro_vae.UserError as e:
        raise SystemExit(f"error: {e}")
