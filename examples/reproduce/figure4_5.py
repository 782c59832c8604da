#!/usr/bin/env python
"""Kingma & Welling (2013), Figures 4 and 5: learned 2-D manifolds, and samples for several latent sizes.

- Figure 4: with a two-dimensional latent space, the decoder means
  :math:`\\mathbb{E}[x \\mid z]` over a grid of codes :math:`z`, the unit square mapped through the
  inverse Gaussian CDF (:func:`pyro_vae.runs.plots.manifold_codes`), for (a) Frey Face and (b) MNIST.
- Figure 5: decoder means of random draws :math:`z \\sim \\mathcal{N}(0, I)` from MNIST models with
  latent sizes 2, 5, 10 and 20.

The models are those of Figure 2 (one hidden layer of tanh units: 500 for MNIST with a Bernoulli
decoder, 200 for Frey Face with a Gaussian decoder; Adagrad, minibatches of 100, AEVB with one
sample per datapoint). The default budget (1e5 training samples per MNIST model, rounded up to
whole epochs, 2e5 for Frey Face) took 3 minutes on a shared 2-core CPU. The paper does not state
the budget of these figures; ``--paper`` trains each model for 1e7 samples. Writes
``figure4.png``, ``figure5.png`` and ``figure4_5.json`` under ``--out``.

Example::

    python examples/reproduce/figure4_5.py --data-dir ~/data
"""

import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import _common as common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import pyro_vae  # noqa: E402
from pyro_vae.runs import plots  # noqa: E402

SETUPS = {
    "mnist": {"title": "MNIST", "likelihood": "bernoulli", "hidden": (500,)},
    "frey": {"title": "Frey Face", "likelihood": "gaussian", "hidden": (200,)},
}
LR_CANDIDATES = (0.01, 0.02, 0.1)
PAPER_SAMPLES = 10**7


def arguments():
    p = common.parser(__doc__.split("\n")[0], "results/figure4_5")
    p.add_argument("--objective", default="elbo", help="training objective (AEVB: elbo)")
    p.add_argument(
        "--sample-latents", type=common.int_list, default=[2, 5, 10, 20], help="MNIST latent sizes of Figure 5"
    )
    p.add_argument("--mnist-samples", type=common.number, default=100_000, help="training samples per MNIST model")
    p.add_argument("--frey-samples", type=common.number, default=200_000, help="training samples for Frey Face")
    p.add_argument("--paper", action="store_true", help=f"train each model for {PAPER_SAMPLES:.0e} samples")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adagrad step size [default: chosen per model from 0.01, 0.02, 0.1 as in the paper]",
    )
    p.add_argument("--lr-trial-samples", type=common.number, default=5_000)
    p.add_argument("--grid", type=int, default=20, help="the MNIST manifold is a GRID x GRID mosaic")
    p.add_argument("--frey-grid", type=int, default=12, help="the Frey Face manifold is a FREY_GRID x FREY_GRID mosaic")
    p.add_argument("--samples-shown", type=int, default=100, help="random samples per latent size (a square)")
    args = p.parse_args()
    if args.paper:
        args.mnist_samples = args.frey_samples = PAPER_SAMPLES
    if args.smoke:
        args.sample_latents, args.mnist_samples, args.frey_samples = [2], 600, 600
        args.train_size, args.test_size, args.lr, args.grid, args.frey_grid, args.samples_shown = (
            300,
            100,
            0.02,
            5,
            4,
            16,
        )
    return args


def train(args, name, z_dim, settings, n_train, out):
    setup = SETUPS[name]

    def config(**changes):
        base = dict(
            likelihood=setup["likelihood"],
            hidden=setup["hidden"],
            activation="tanh",
            optimizer="adagrad",
            batch_size=100,
            z_dim=z_dim,
            objective=args.objective,
            seed=args.seed,
            device=args.device,
            **settings,
        )
        return pyro_vae.Config(**{**base, **changes})

    lr, scores = args.lr, None
    if lr is None:
        trial = {"epochs": math.ceil(args.lr_trial_samples / n_train)}
        if n_train > args.lr_trial_samples:
            trial.update(common.data_settings(name, args.data_dir, out / "data", args.lr_trial_samples, 100))
        lr, scores = common.select_lr(config, LR_CANDIDATES, trial, out / "lr-trials" / f"{name}-z{z_dim}")
    epochs = math.ceil(getattr(args, f"{name}_samples") / n_train)
    t0 = time.perf_counter()
    run = pyro_vae.fit(config(lr=lr, epochs=epochs), out / "runs" / f"{name}-z{z_dim}", overwrite=True, quiet=True)
    seconds = time.perf_counter() - t0
    last = run.metrics[-1]
    common.say(
        f"{setup['title']:9s} z={z_dim:<3d} lr={lr:<5g} {epochs * n_train:>9,d} samples: "
        f"test ELBO {run.final['test_elbo_last']:9.2f} nats ({seconds:.0f} s)"
    )
    record = {
        "dataset": name,
        "z_dim": z_dim,
        "lr": lr,
        "lr_trials": scores,
        "epochs": epochs,
        "samples": epochs * n_train,
        "seconds": seconds,
        "train_elbo": last["train_elbo"],
        "test_elbo": run.final["test_elbo_last"],  # the last epoch's model, as the paper's curves
        "valid_elbo": last["valid_elbo"],
        "run_dir": str(run.directory),
    }
    return run, record


def mosaic(x, image_shape, ncol):
    h, w = image_shape[-2:]  # grayscale items (1, H, W) or (H, W)
    images = np.clip(x.detach().cpu().numpy().reshape(-1, h, w), 0.0, 1.0)
    return plots.tile(images, ncol)


def show(ax, grid, title):
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()


def main():
    args = arguments()
    common.setup_threads(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {
        "figures": "Kingma & Welling (2013), Figures 4 and 5",
        "source": common.KINGMA_WELLING,
        "objective": args.objective,
        "budget": {
            "mnist_samples": args.mnist_samples,
            "frey_samples": args.frey_samples,
            "paper_samples_assumed": PAPER_SAMPLES,
        },
        "manifold": {
            "grid": args.grid,
            "frey_grid": args.frey_grid,
            "codes": "Phi^-1 of a linearly spaced grid on the unit square",
        },
        "runs": [],
        "machine": common.machine(),
    }
    runs, samples = {}, {}
    for name, latents in (("frey", [2]), ("mnist", sorted(set([2] + args.sample_latents)))):
        settings = common.data_settings(name, args.data_dir, out / "data", args.train_size, args.test_size)
        probe = pyro_vae.Config(likelihood=SETUPS[name]["likelihood"], device=args.device, **settings)
        n_train = common.evaluation_sets(probe, 1, args.seed)[2]
        for z in latents:
            runs[name, z], record = train(args, name, z, settings, n_train, out)
            samples[name, z] = record["samples"]
            results["runs"].append(record)
            common.write_json(out / "figure4_5.json", results)

    # Figure 4: the learned manifolds
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.6), dpi=100, gridspec_kw={"width_ratios": [20 / 28, 1.0]})
    for ax, name, letter in zip(axes, ("frey", "mnist"), "ab"):
        run = runs[name, 2]
        n = args.frey_grid if name == "frey" else args.grid
        grid = mosaic(run.vae.decode(plots.manifold_codes(n, device=run.device)), run.image_shape, n)
        show(ax, grid, f"({letter}) Learned {SETUPS[name]['title']} manifold")
    fig.suptitle(
        f"Kingma & Welling (2013) Fig. 4, reproduced: $N_z = 2$, {common.sci(samples['frey', 2])} (Frey Face) "
        f"and {common.sci(samples['mnist', 2])} (MNIST) training samples",
        fontsize=10,
    )
    fig.tight_layout()
    common.save_gray(fig, out / "figure4.png")
    plt.close(fig)

    # Figure 5: random samples for several latent sizes
    side = math.isqrt(args.samples_shown)
    fig, axes = plt.subplots(
        1, len(args.sample_latents), figsize=(3 * len(args.sample_latents), 3.4), dpi=100, squeeze=False
    )
    for ax, z in zip(axes[0], args.sample_latents):
        run = runs["mnist", z]
        show(ax, mosaic(run.sample(side * side, seed=args.seed), run.image_shape, side), f"{z}-D latent space")
    fig.suptitle(
        f"Kingma & Welling (2013) Fig. 5, reproduced: MNIST, {common.sci(samples['mnist', 2])} training samples "
        "per model",
        fontsize=10,
    )
    fig.tight_layout()
    common.save_gray(fig, out / "figure5.png")
    plt.close(fig)

    results["seconds"] = time.perf_counter() - t0
    common.write_json(out / "figure4_5.json", results)
    common.say(f"wrote figure4.png, figure5.png and figure4_5.json to {out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    common.main_guard(main)
