#!/usr/bin/env python
"""Semi-supervised MNIST with M2 (Kingma, Rezende, Mohamed & Welling 2014, Table 1): test error with few labels.

Trains ``pyro-vae fit --semi-supervised --labelled N`` on MNIST (dynamically binarized, 55000 training items of
which N keep their labels, balanced over the classes by a seeded draw; 5000 validation items) once per seed,
and reports the test classification error of the classifier :math:`q(y \\mid x)` of ``best.pt`` (the epoch with
the best validation ELBO), mean and spread over the seeds, next to the paper's M2 row and Pyro's SS-VAE tutorial.

The settings (``--paper`` for the full budget): z 50, one hidden layer of 500 softplus units in every net, Adam
with learning rate 3e-4, minibatches of 200 unlabelled + 100 labelled items, alpha 50 (per labelled item; the paper
takes alpha = 0.1 N per dataset sum), and the label summed out by enumeration. Changed from the paper: Adam instead of
RMSprop with momentum, one hidden layer (Pyro's example), alpha as above, dynamic binarization.

Writes ``ss_mnist.json`` (every number, the settings, the machine), ``ss_mnist.md`` (the table) and
``ss_mnist.png`` (the first seed's conditional samples: one row per class, the same z down each column, as the
paper's Figure 1) under ``--out``, and one run folder per seed (``runs/seedS``).

Example::

    python examples/reproduce/ss_mnist.py --data-dir ~/data --paper
"""

import json
import math
import time
from pathlib import Path

import _common as common

import pyro_vae

#: Kingma et al. (2014), Table 1, M2 test error (%) by number of labels, mean and standard deviation
PAPER_M2 = {100: (11.97, 1.71), 600: (4.94, 0.13), 1000: (3.60, 0.56), 3000: (3.92, 0.63)}
#: Pyro's SS-VAE tutorial (examples/vae/ss_vae_M2.py), 100 labels, test error (%)
PYRO_TUTORIAL = {100: (6.81, 0.60)}
KINGMA_2014 = "Kingma, Rezende, Mohamed & Welling (2014), Semi-supervised learning with deep generative models, Table 1"


def arguments():
    p = common.parser(__doc__.splitlines()[0], "ss_mnist")
    p.add_argument("--labelled", type=common.number, default=100, help="labelled training items")
    p.add_argument("--seeds", type=common.number, default=3, help="runs, seeds 0..S-1")
    p.add_argument("--epochs", type=common.number, default=10)
    p.add_argument("--paper", action="store_true", help="the full budget: 100 epochs per seed")
    p.add_argument("--alpha", type=float, default=50.0)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=common.number, default=200)
    p.add_argument("--eval-samples", type=common.number, default=100,
                   help="importance samples per class and test item for log p(x)")  # fmt: skip
    args = p.parse_args()
    if args.paper:
        args.epochs = 100
    return args


def settings(args, seed):
    if args.smoke:  # scikit-learn's 8x8 digits: labelled, a few seconds
        return pyro_vae.Config(dataset="digits", likelihood="bernoulli", semi_supervised=True, labelled=20, alpha=args.alpha, z_dim=4, hidden=(32,),
                               activation="softplus", lr=1e-3, batch_size=64, epochs=1, seed=seed,
                               device=args.device)  # fmt: skip
    return pyro_vae.Config(dataset="mnist", data_dir=args.data_dir, likelihood="bernoulli",
                           likelihood_options={"binarize": "dynamic"}, semi_supervised=True, labelled=args.labelled,
                           alpha=args.alpha, z_dim=50, hidden=(500,), activation="softplus", lr=args.lr,
                           batch_size=args.batch_size, epochs=args.epochs, seed=seed, device=args.device)  # fmt: skip


def main():
    args = arguments()
    common.setup_threads(args)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    seeds = range(1 if args.smoke else args.seeds)
    results = []
    for seed in seeds:
        t0 = time.perf_counter()
        run = pyro_vae.fit(settings(args, seed), out=out / "runs" / f"seed{seed}", overwrite=True, quiet=True)
        seconds = time.perf_counter() - t0
        scored = run.evaluate(samples=2 if args.smoke else args.eval_samples, seed=0,
                              subset=50 if args.smoke else None)  # fmt: skip
        results.append({"seed": seed, "test_error": run.final["test_error"], "test_error_last": run.final["test_error_last"],
                        "best_epoch": run.final["best_epoch"], "epochs": run.final["epochs"],
                        "test_log_px": scored["test_log_likelihood"], "test_elbo": scored["test_elbo"],
                        "eval_items": scored["items"], "train_seconds": seconds,
                        "valid_error": [m["valid_error"] for m in run.metrics]})  # fmt: skip
        print(f"seed {seed}: test error {100 * run.final['test_error']:.2f}% (best epoch {run.final['best_epoch']} of "
              f"{run.final['epochs']}), log p(x) >= {scored['test_log_likelihood']:.2f} nats, {seconds:.0f} s")
        if seed == 0:
            run.save_samples(out / "ss_mnist.png", n=10 * 10, seed=0)
    errors = [100 * r["test_error"] for r in results]
    mean = sum(errors) / len(errors)
    spread = math.sqrt(sum((e - mean) ** 2 for e in errors) / (len(errors) - 1)) if len(errors) > 1 else None
    config = settings(args, 0).to_dict()
    summary = {"labelled": config["labelled"], "test_error_mean": mean, "test_error_std": spread, "runs": results,
               "settings": config, "smoke": args.smoke, "paper_m2": PAPER_M2.get(args.labelled),
               "pyro_tutorial": PYRO_TUTORIAL.get(args.labelled), "source": KINGMA_2014, "machine": common.machine()}  # fmt: skip
    (out / "ss_mnist.json").write_text(json.dumps(summary, indent=2) + "\n")
    paper, pyro_row = PAPER_M2.get(args.labelled), PYRO_TUTORIAL.get(args.labelled)
    lines = [f"| M2, {config['labelled']} labels | test error (%) | runs |", "|---|---|---|",
             f"| pyro-vae ({args.epochs if not args.smoke else 1} epochs) | {mean:.2f}"
             + (f" +- {spread:.2f}" if spread is not None else "") + f" | {len(errors)} |"]  # fmt: skip
    if paper:
        lines.append(f"| Kingma et al. (2014), Table 1 | {paper[0]:.2f} +- {paper[1]:.2f} | |")
    if pyro_row:
        lines.append(f"| Pyro's SS-VAE tutorial | {pyro_row[0]:.2f} +- {pyro_row[1]:.2f} | |")
    (out / "ss_mnist.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
