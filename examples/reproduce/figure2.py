#!/usr/bin/env python
"""Kingma & Welling (2013), Figure 2: the lower bound per datapoint against training samples evaluated.

The paper trains, for each latent size, a model with AEVB (the SGVB estimator, one sample per
datapoint) and one with the wake-sleep algorithm, and plots the variational lower bound on
training and test data against the number of training samples evaluated (10^5 to 10^8):

- MNIST: latent sizes 3, 5, 10, 20, 200; encoder and decoder with one hidden layer of 500 tanh
  units; Bernoulli decoder;
- Frey Face: latent sizes 2, 5, 10, 20; 200 hidden units; Gaussian decoder;
- Adagrad with the step size chosen from {0.01, 0.02, 0.1} by the training bound in the first
  iterations; minibatches of 100.

The comparator is the objective registered as ``rws`` (reweighted wake-sleep, Bornschein & Bengio
2015, whose wake phase is Hinton et al.'s wake-sleep with importance weights), trained with
``--comparator-particles`` samples per datapoint; ``--objectives`` picks others.

The default budget (1e5 training samples per MNIST model, rounded up to whole epochs: 1.2e5; 2e5
per Frey Face model) took 7 minutes for all 18 models on a shared 2-core CPU; ``--paper`` trains
each model for 1e8 samples as in the paper (hours per model: MNIST trained at 2000 to 11000
samples per second there). Writes ``figure2_mnist.png``, ``figure2_frey.png`` and ``figure2.json``
under ``--out``.

Example::

    python examples/reproduce/figure2.py --data-dir ~/data            # minutes
    python examples/reproduce/figure2.py --data-dir ~/data --paper    # the paper's budget
"""

import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import _common as common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

import pyro_vae  # noqa: E402

SETUPS = {
    "mnist": {"title": "MNIST", "likelihood": "bernoulli", "hidden": (500,), "latents": [3, 5, 10, 20, 200],
              "paper_ylim": (-150, -100)},
    "frey": {"title": "Frey Face", "likelihood": "gaussian", "hidden": (200,), "latents": [2, 5, 10, 20],
             "paper_ylim": (0, 1600)},
}  # fmt: skip
LR_CANDIDATES = (0.01, 0.02, 0.1)
PAPER_SAMPLES = 10**8
STYLE = {"elbo": ("tab:red", "AEVB"), "rws": ("tab:green", "wake-sleep (rws)")}


def arguments():
    p = common.parser(__doc__.split("\n")[0], "results/figure2")
    p.add_argument("--datasets", default="mnist,frey", help="comma-separated: mnist, frey")
    p.add_argument(
        "--objectives",
        default="elbo,rws",
        help="objectives to compare; the first is AEVB (elbo), the others comparators",
    )
    p.add_argument(
        "--comparator-particles",
        type=int,
        default=2,
        help="samples per datapoint for the objectives other than elbo (RWS needs at least 2)",
    )
    p.add_argument("--mnist-latents", type=common.int_list, default=SETUPS["mnist"]["latents"])
    p.add_argument("--frey-latents", type=common.int_list, default=SETUPS["frey"]["latents"])
    p.add_argument(
        "--mnist-samples", type=common.number, default=100_000, help="training samples evaluated per MNIST model"
    )
    p.add_argument(
        "--frey-samples", type=common.number, default=200_000, help="training samples evaluated per Frey Face model"
    )
    p.add_argument("--paper", action="store_true", help=f"the paper's budget: {PAPER_SAMPLES:.0e} samples per model")
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adagrad step size [default: chosen per model from 0.01, 0.02, 0.1 as in the paper]",
    )
    p.add_argument(
        "--lr-trial-samples", type=common.number, default=5_000, help="training samples per step-size candidate"
    )
    p.add_argument("--eval-items", type=int, default=1000, help="train and test items the bound is estimated on")
    p.add_argument("--points-per-decade", type=int, default=6, help="bound evaluations per decade of samples")
    args = p.parse_args()
    if args.paper:
        args.mnist_samples = args.frey_samples = PAPER_SAMPLES
    if args.smoke:
        args.mnist_latents, args.frey_latents = [3], [2]
        args.mnist_samples = args.frey_samples = 600
        args.train_size, args.test_size, args.eval_items = 300, 100, 50
        args.lr, args.points_per_decade = 0.02, 2
    return args


def train_one(args, name, settings, z_dim, objective, eval_sets, out):
    """Train one model of one panel, recording the bound as it goes."""
    setup = SETUPS[name]
    budget = getattr(args, f"{name}_samples")
    train_eval, test_eval, n_train = eval_sets
    particles = 1 if objective == "elbo" else args.comparator_particles

    def config(**changes):
        base = dict(
            likelihood=setup["likelihood"],
            hidden=setup["hidden"],
            activation="tanh",
            optimizer="adagrad",
            batch_size=100,
            z_dim=z_dim,
            objective=objective,
            particles=particles,
            seed=args.seed,
            device=args.device,
            **settings,
        )
        return pyro_vae.Config(**{**base, **changes})

    lr, lr_scores = args.lr, None
    if lr is None:
        trial_epochs = math.ceil(args.lr_trial_samples / n_train)
        trial = {"epochs": trial_epochs}
        if trial_epochs == 1 and n_train > args.lr_trial_samples:  # the first minibatches of one epoch
            trial.update(common.data_settings(name, args.data_dir, out / "data", args.lr_trial_samples, 100))
        lr, lr_scores = common.select_lr(
            config, LR_CANDIDATES, trial, out / "lr-trials" / f"{name}-z{z_dim}-{objective}"
        )

    epochs = math.ceil(budget / n_train)
    recorder = common.BoundRecorder(
        train_eval, test_eval, common.log_spaced(budget, args.points_per_decade, start=min(1000, budget))
    )
    t0 = time.perf_counter()
    run = pyro_vae.fit(
        config(lr=lr, epochs=epochs),
        out / "runs" / f"{name}-z{z_dim}-{objective}",
        overwrite=True,
        quiet=True,
        on_step=recorder,
    )
    recorder.record(run.vae, epochs * n_train)
    seconds = time.perf_counter() - t0
    last = recorder.points[-1]
    common.say(
        f"{setup['title']:9s} z={z_dim:<3d} {objective:6s} lr={lr:<5g} {epochs * n_train:>10,d} samples: "
        f"train bound {last['train_bound']:9.2f}  test bound {last['test_bound']:9.2f}  "
        f"({seconds - recorder.seconds:.0f} s training, {recorder.seconds:.0f} s evaluating)"
    )
    return {
        "dataset": name,
        "z_dim": z_dim,
        "objective": objective,
        "particles": particles,
        "lr": lr,
        "lr_trials": lr_scores,
        "epochs": epochs,
        "n_train": n_train,
        "samples": epochs * n_train,
        "train_seconds": seconds - recorder.seconds,
        "eval_seconds": recorder.seconds,
        "curve": recorder.points,
        "final": {"train_bound": last["train_bound"], "test_bound": last["test_bound"]},
        "run_dir": str(run.directory),  # its metrics.jsonl has the per-epoch numbers
    }


def plot(name, runs, objectives, path, budget):
    setup = SETUPS[name]
    latents = sorted({r["z_dim"] for r in runs})
    fig, axes = plt.subplots(1, len(latents), figsize=(3.2 * len(latents), 3.4), dpi=100, squeeze=False)
    lows = []
    for ax, z in zip(axes[0], latents):
        for objective in objectives:
            color, label = STYLE.get(objective, (None, objective))
            for r in runs:
                if r["z_dim"] == z and r["objective"] == objective:
                    x = [p["samples"] for p in r["curve"]]
                    ax.plot(x, [p["train_bound"] for p in r["curve"]], "-", color=color, label=f"{label} (train)")
                    ax.plot(x, [p["test_bound"] for p in r["curve"]], "--", color=color, label=f"{label} (test)")
                    lows += [p["test_bound"] for p in r["curve"]]
        ax.set_xscale("log")
        ax.set_title(f"{setup['title']}, $N_z = {z}$", fontsize=10)
        ax.set_xlabel("# training samples evaluated")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(r"$\mathcal{L}$ per datapoint (nats)")
    lo, hi = setup["paper_ylim"]
    if lows:  # the paper's axis range, stretched to the early (lower) part of a short run
        lo = max(min(lo, min(lows)), lo - (hi - lo))
        hi = max(hi, max(v for v in lows if math.isfinite(v)))
    for ax in axes[0]:
        ax.set_ylim(lo, hi + 0.02 * (hi - lo))
        ax.set_xlim(right=max(budget, 1000) * 1.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"Kingma & Welling (2013) Fig. 2, {setup['title']}: {common.sci(max(r['samples'] for r in runs))} training "
        f"samples per model (paper: {common.sci(PAPER_SAMPLES)})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    args = arguments()
    common.setup_threads(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    objectives, skipped = common.split_registered([o for o in args.objectives.split(",") if o])
    for name in skipped:
        common.say(
            f"objective {name!r} is not registered in this pyro_vae (have: "
            f"{', '.join(pyro_vae.OBJECTIVES.names())}); skipping it"
        )
    if not objectives:
        raise pyro_vae.UserError("none of the --objectives is registered")
    datasets = [d for d in args.datasets.split(",") if d]
    for d in datasets:
        if d not in SETUPS:
            raise pyro_vae.UserError(f"--datasets takes mnist and frey, got {d!r}")

    t0 = time.perf_counter()
    results = {
        "figure": "Kingma & Welling (2013), Figure 2",
        "source": common.KINGMA_WELLING,
        "objectives": objectives,
        "skipped_objectives": skipped,
        "budget": {},
        "settings": {},
        "runs": [],
        "machine": common.machine(),
    }
    for name in datasets:
        setup = SETUPS[name]
        budget = getattr(args, f"{name}_samples")
        settings = common.data_settings(name, args.data_dir, out / "data", args.train_size, args.test_size)
        probe = pyro_vae.Config(likelihood=setup["likelihood"], device=args.device, seed=args.seed, **settings)
        eval_sets = common.evaluation_sets(probe, args.eval_items, args.seed)
        results["budget"][name] = {
            "samples_per_model": budget,
            "paper_samples_per_model": PAPER_SAMPLES,
            "n_train": eval_sets[2],
            "eval_items": len(eval_sets[0]),
        }
        results["settings"][name] = {
            "likelihood": setup["likelihood"],
            "hidden": list(setup["hidden"]),
            "activation": "tanh",
            "optimizer": "adagrad",
            "batch_size": 100,
            "lr": args.lr or f"selected from {LR_CANDIDATES}",
            **settings,
        }
        runs = []
        for z in getattr(args, f"{name}_latents"):
            for objective in objectives:
                runs.append(train_one(args, name, settings, z, objective, eval_sets, out))
        results["runs"] += runs
        plot(name, runs, objectives, out / f"figure2_{name}.png", budget)
        results["seconds"] = time.perf_counter() - t0
        common.write_json(out / "figure2.json", results)
    common.say(
        f"wrote {', '.join(f'figure2_{d}.png' for d in datasets)} and figure2.json to {out} "
        f"({time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    common.main_guard(main)
