#!/usr/bin/env python
"""Compare likelihood families p(x|z): one VAE per family, same data, same architecture and budget.

Prints and saves (``comparison.json``, ``comparison.png``) each family's test ELBO and
importance-sampled log p(x), grouped by the data they score: a Bernoulli scores binarized images
(a probability mass), the continuous families score the grayscale images (a density), and numbers
are only comparable within a group.

    python examples/compare_likelihoods.py --data-dir ~/data --families bernoulli,gaussian
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae import plots  # noqa: E402


def scored_data(family):
    """What a family's log-likelihood is of: binarized images, or the grayscale values themselves."""
    return "binarized images (pmf)" if family.domain == "binary" else "grayscale images (density)"


def main(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, runs = [], {}
    for name in args.families.split(","):
        family = pyro_vae.build_likelihood(name)  # an unknown name raises UserError listing the choices
        try:
            run = pyro_vae.fit(
                dataset=args.dataset,
                data_dir=args.data_dir,
                likelihood=name,
                z_dim=args.z_dim,
                epochs=args.epochs,
                seed=0,
                out=out / name,
                overwrite=True,
                quiet=True,
            )
        except pyro_vae.UserError as e:  # e.g. the data lie outside the family's support
            print(f"{name}: skipped ({e})")
            continue
        result = run.evaluate(samples=args.samples, subset=args.subset)
        rows.append({"likelihood": name, "scores": scored_data(family), **result})
        runs[name] = run
    for group in sorted({r["scores"] for r in rows}):
        print(f"\n{group}:")
        print(f"  {'likelihood':22s} {'test ELBO':>10s} {'log p(x)':>10s}")
        for r in sorted((r for r in rows if r["scores"] == group), key=lambda r: -r["test_log_likelihood"]):
            print(f"  {r['likelihood']:22s} {r['test_elbo']:10.2f} {r['test_log_likelihood']:10.2f}")
    (out / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")

    # samples of each family side by side
    fig, axes = plt.subplots(1, len(runs), figsize=(3 * len(runs), 3.3), squeeze=False)
    for ax, (name, run) in zip(axes[0], runs.items()):
        side = 8
        grid = plots.image_grid(run.sample(side * side), run.image_shape, nrow=side)  # colour for colour data
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "comparison.png")
    plt.close(fig)
    print(f"\nwrote {out / 'comparison.json'} and {out / 'comparison.png'}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default="bernoulli,gaussian", help="comma-separated likelihood names")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None, help="folder holding the data [default: $PYRO_VAE_DATA]")
    p.add_argument("--z-dim", type=int, default=20)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--samples", type=int, default=1000, help="importance samples per test image")
    p.add_argument("--subset", type=int, default=1000, help="evaluate on the first N test images")
    p.add_argument("--out", default="runs/compare-likelihoods")
    p.add_argument("--smoke", action="store_true", help="a few seconds' run on the bundled 8x8 digits (for CI)")
    args = p.parse_args()
    if args.smoke:
        args.dataset, args.epochs, args.samples, args.subset = "digits", 1, 10, 50
    try:
        main(args)
    except pyro_vae.UserError as e:
        raise SystemExit(f"error: {e}")
