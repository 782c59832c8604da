#!/usr/bin/env python
"""Semi-supervised MNIST with M2 and M1+M2 (Kingma, Rezende, Mohamed & Welling 2014, Table 1): test error with few labels.

``--model m2`` (the default) trains ``pyro-vae fit --semi-supervised --labelled N`` on MNIST (dynamically
binarized, 55000 training items of which N keep their labels, balanced over the classes by a seeded draw; 5000
validation items) once per seed, and reports the test classification error of the classifier
:math:`q(y \\mid x)` of ``best.pt`` (the epoch with the best validation ELBO), mean and spread over the seeds, next
to the paper's M2 row and Pyro's SS-VAE tutorial. Settings: z 50, one hidden layer of 500 softplus units in every
net, Adam with learning rate 3e-4, minibatches of 200 unlabelled + 100 labelled items, alpha 50 per labelled item,
the label summed out by enumeration. Changed from the paper: Adam instead of RMSprop with momentum, alpha as above,
dynamic binarization.

``--model m1+m2`` is the paper's stacked model: M1, a plain VAE (784-600-600-50 ReLU, the flow prior, 30 epochs
on all training images, no labels), is trained first; each image is replaced by M1's posterior mean
:math:`\\mathbb{E}_{q(z_1 \\mid x)}[z_1]` (``latent.encode_run``); then M2 is fitted on those 50-dimensional codes with a
Gaussian decoder (``fit(Config(data=codes.npz, likelihood="gaussian", semi_supervised=True, ...))``, z 50, 500
softplus units, Adam 1e-3). Changed from the paper: M1's flow prior (more active units than N(0, I) at this
budget), posterior means instead of draws of :math:`z_1`, Adam. One M1 per seed serves every ``--labelled`` count.

Writes ``ss_mnist.json`` (every number, the settings, the machine), ``ss_mnist.md`` (the table) and
``ss_mnist.png`` (the first seed's conditional samples: one row per class, the same z down each column, as the
paper's Figure 1; for M1+M2 decoded to images through M1's decoder) under ``--out``, and the run folders under
``runs/`` (``seedS`` for M2, ``seedS/m1`` and ``seedS/m2-N`` for M1+M2).

Example::

    python examples/reproduce/ss_mnist.py --data-dir ~/data --model m1+m2 --labelled 100,600,1000,3000
"""

import math
import time
from pathlib import Path

import _common as common
import numpy as np
import torch

import pyro_vae
from pyro_vae.runs import latent, plots

#: Kingma et al. (2014), Table 1, test error (%) by number of labels, mean and standard deviation
PAPER = {"m2": {100: (11.97, 1.71), 600: (4.94, 0.13), 1000: (3.60, 0.56), 3000: (3.92, 0.63)},
         "m1+m2": {100: (3.33, 0.14), 600: (2.59, 0.05), 1000: (2.40, 0.02), 3000: (2.18, 0.04)}}  # fmt: skip
#: Pyro's SS-VAE tutorial (M2 with the classification loss, y enumerated), test error (%) from its accuracies
#: 0.9319, 0.9437, 0.9487, 0.9582 (the spread it gives is a 95% interval over 5 draws of the labels)
PYRO_TUTORIAL = {100: (6.81, 0.60), 600: (5.63, 0.70), 1000: (5.13, 0.38), 3000: (4.18, 0.12)}
KINGMA_2014 = "Kingma, Rezende, Mohamed & Welling (2014), Semi-supervised learning with deep generative models, Table 1"


def arguments():
    p = common.parser(__doc__.splitlines()[0], "ss_mnist")
    p.add_argument("--model", choices=["m2", "m1+m2"], default="m2")
    p.add_argument("--labelled", type=common.int_list, default=[100], help="labelled training items (a list: a row each)")
    p.add_argument("--seeds", type=common.number, default=3, help="runs: seeds --seed .. --seed + S - 1")
    p.add_argument("--epochs", type=common.number, default=None, help="M2's epochs [default: m2 10, m1+m2 25]")
    p.add_argument("--m1-epochs", type=common.number, default=30, help="M1's epochs (m1+m2)")
    p.add_argument("--paper", action="store_true", help="the full budget: 100 epochs of M2 per seed (and of M1)")
    p.add_argument("--alpha", type=float, default=50.0)
    p.add_argument("--lr", type=float, default=None, help="M2's learning rate [default: m2 3e-4, m1+m2 1e-3]")
    p.add_argument("--batch-size", type=common.number, default=200)
    p.add_argument("--eval-samples", type=common.number, default=100,
                   help="importance samples per class and test item for log p(x)")  # fmt: skip
    args = p.parse_args()
    stacked = args.model == "m1+m2"
    args.epochs = args.epochs or (25 if stacked else 10)
    args.lr = args.lr or (1e-3 if stacked else 3e-4)
    if args.paper:
        args.epochs, args.m1_epochs = 100, 100
    return args


def m2_settings(args, seed, labelled, data=None):
    """M2: on MNIST itself, or (``data``) on M1's codes with a Gaussian decoder."""
    if args.smoke:  # a few seconds
        base = dict(z_dim=4, hidden=(32,), lr=1e-3, batch_size=64, epochs=1, labelled=20)
    else:
        base = dict(z_dim=50, hidden=(500,), lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                    labelled=labelled)  # fmt: skip
    if data is not None:  # M1's codes: p(z1 | y, z2) a Gaussian with a learned scale
        base.update(data=data, likelihood="gaussian")
    elif args.smoke:  # scikit-learn's 8x8 digits: labelled
        base.update(dataset="digits", likelihood="bernoulli")
    else:
        base.update(dataset="mnist", data_dir=args.data_dir, likelihood="bernoulli",
                    likelihood_options={"binarize": "dynamic"})  # fmt: skip
    return pyro_vae.Config(semi_supervised=True, alpha=args.alpha, activation="softplus", seed=seed, device=args.device,
                           **base)  # fmt: skip


def m1_settings(args, seed):
    """M1: a plain VAE on every training image, no labels."""
    if args.smoke:
        return pyro_vae.Config(dataset="digits", likelihood="bernoulli", z_dim=4, hidden=(32,), epochs=1, seed=seed,
                               device=args.device)  # fmt: skip
    return pyro_vae.Config(dataset="mnist", data_dir=args.data_dir, likelihood="bernoulli",
                           likelihood_options={"binarize": "dynamic"}, prior="flow", z_dim=50, hidden=(600, 600),
                           epochs=args.m1_epochs, seed=seed, device=args.device)  # fmt: skip


def m1_codes(m1, path):
    """M1's posterior means of its training, validation and test items, saved as ``path`` (``x_train``/``y_train``:
    training and validation items, ``x_test``/``y_test``) for M2's ``--data``."""
    parts = {split: latent.encode_run(m1, split) for split in ("train", "val", "test")}
    np.savez(path, x_train=np.concatenate([parts["train"][0], parts["val"][0]]),
             y_train=np.concatenate([parts["train"][1], parts["val"][1]]), x_test=parts["test"][0],
             y_test=parts["test"][1])  # fmt: skip


@torch.no_grad()
def stacked_class_grid(m1, m2, path, columns=10):
    """M1+M2's Figure 1: M2's codes ``z_1`` for each class (rows) and the same ``z_2`` down each column, decoded to
    images by M1's decoder."""
    generator = torch.Generator(device=m2.device).manual_seed(0)
    z1 = m2.vae.class_grid(columns=columns, generator=generator)
    images = latent.decode(m1.vae, z1.to(m1.device))
    plots.save_grid(images, m1.image_shape, path, ncol=columns,
                    title="M1+M2: one row per class (0 at the top), the same z2 down each column")


def fit_one(config, folder):
    t0 = time.perf_counter()
    run = pyro_vae.fit(config, out=folder, overwrite=True, quiet=True)
    return run, time.perf_counter() - t0


def main():
    args = arguments()
    common.setup_threads(args)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    stacked = args.model == "m1+m2"
    seeds = range(args.seed, args.seed + (1 if args.smoke else args.seeds))
    counts = [20] if args.smoke else args.labelled
    results = []
    for seed in seeds:
        m1, m1_seconds = None, 0.0
        if stacked:
            m1, m1_seconds = fit_one(m1_settings(args, seed), out / "runs" / f"seed{seed}" / "m1")
            codes = out / "runs" / f"seed{seed}" / "m1_codes.npz"
            m1_codes(m1, codes)
            common.say(f"seed {seed}: M1 test ELBO {m1.final['test_elbo']:.2f} ({m1_seconds:.0f} s)")
        for n in counts:
            folder = out / "runs" / (f"seed{seed}" if not stacked else f"seed{seed}/m2-{n}")
            config = m2_settings(args, seed, n, data=str(codes) if stacked else None)
            run, seconds = fit_one(config, folder)
            scored = run.evaluate(samples=2 if args.smoke else args.eval_samples, seed=0,
                                  subset=50 if args.smoke else None)  # fmt: skip
            results.append({"seed": seed, "labelled": n, "test_error": run.final["test_error"],
                            "test_error_last": run.final["test_error_last"], "best_epoch": run.final["best_epoch"],
                            "epochs": run.final["epochs"], "test_log_px": scored["test_log_likelihood"],
                            "test_elbo": scored["test_elbo"], "eval_items": scored["items"], "train_seconds": seconds,
                            "m1_seconds": m1_seconds, "m1_test_elbo": m1.final["test_elbo"] if m1 else None,
                            "valid_error": [m["valid_error"] for m in run.metrics]})  # fmt: skip
            common.say(f"seed {seed}, {n} labels: test error {100 * run.final['test_error']:.2f}% (best epoch "
                       f"{run.final['best_epoch']} of {run.final['epochs']}), {seconds:.0f} s")  # fmt: skip
            if seed == args.seed and n == counts[0]:
                if stacked:
                    stacked_class_grid(m1, run, out / "ss_mnist.png")
                else:
                    run.save_samples(out / "ss_mnist.png", n=10 * 10, seed=0)
    rows = []
    for n in counts:
        errors = [100 * r["test_error"] for r in results if r["labelled"] == n]
        mean = sum(errors) / len(errors)
        spread = math.sqrt(sum((e - mean) ** 2 for e in errors) / (len(errors) - 1)) if len(errors) > 1 else None
        seconds = [r["train_seconds"] + r["m1_seconds"] for r in results if r["labelled"] == n]
        rows.append({"labelled": n, "test_error_mean": mean, "test_error_std": spread, "runs": len(errors),
                     "seconds_mean": sum(seconds) / len(seconds), "paper": PAPER[args.model].get(n),
                     "pyro_tutorial_m2": PYRO_TUTORIAL.get(n)})  # fmt: skip
    summary = {"model": args.model, "rows": rows, "runs": results, "smoke": args.smoke,
               "settings": m2_settings(args, args.seed, counts[0]).to_dict() if not stacked else None,
               "m1_settings": m1_settings(args, args.seed).to_dict() if stacked else None, "epochs": args.epochs,
               "lr": args.lr, "alpha": args.alpha,
               "test_log_px_of": "M1's codes z1 (a density on codes, not on images)" if stacked else "the binarized test images", "source": KINGMA_2014, "machine": common.machine()}  # fmt: skip
    common.write_json(out / "ss_mnist.json", summary)
    name = "M1+M2" if stacked else "M2"
    lines = [f"| labels | pyro-vae {name}, test error (%) | runs | seconds per run | Kingma et al. (2014) {name} "
             "| Pyro's SS-VAE tutorial (M2) |", "|---:|---|---:|---:|---|---|"]  # fmt: skip
    fmt = lambda pair: f"{pair[0]:.2f} +- {pair[1]:.2f}" if pair else ""  # noqa: E731
    for row in rows:
        ours = f"{row['test_error_mean']:.2f}" + (f" +- {row['test_error_std']:.2f}" if row["test_error_std"] else "")
        lines.append(f"| {row['labelled']} | {ours} | {row['runs']} | {row['seconds_mean']:.0f} | "
                     f"{fmt(row['paper'])} | {fmt(row['pyro_tutorial_m2'])} |")  # fmt: skip
    (out / "ss_mnist.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    common.main_guard(main)
