#!/usr/bin/env python
"""A first VAE from Python: what ``pyro-vae fit``, ``evaluate`` and ``sample`` do, in code.

Trains the default model (784-400-20, ReLU, Adam) on MNIST, prints the learning curve, estimates
the test log-likelihood by importance sampling, draws samples, and loads the run back.

    python examples/first_fit.py --data-dir ~/data --epochs 10
"""

import argparse
from pathlib import Path

import torch

import pyro_vae


def main(args):
    # 1. Train: every setting is a field of pyro_vae.Config (here given as keywords); the run
    #    folder gets config.json, metrics.jsonl, checkpoint.pt and pictures.
    run = pyro_vae.fit(
        dataset=args.dataset,
        data_dir=args.data_dir,
        likelihood="bernoulli",  # binarizes the grayscale pixels afresh for every minibatch
        z_dim=20,
        epochs=args.epochs,
        seed=0,
        out=args.out,
        overwrite=True,
        quiet=True,
    )
    for m in run.metrics:
        print(
            f"epoch {m['epoch']:2d}: train ELBO {m['train_elbo']:8.2f}, validation ELBO {m['valid_elbo']:8.2f} nats "
            f"({m['items_per_s']:.0f} images/s)"
        )

    # 2. Evaluate: the ELBO and the importance-sampled log p(x) on the test set, nats per image.
    result = run.evaluate(samples=args.samples, subset=args.subset)
    print(
        f"test ELBO {result['test_elbo']:.2f}, log p(x) >= {result['test_log_likelihood']:.2f} nats "
        f"({result['samples']} importance samples, {result['items']} test images)"
    )

    # 3. Generate: decoder means for codes drawn from the prior, and for codes of your own.
    images = run.sample(64, seed=1)  # (64, 1, 28, 28): items in the data's shape, on the CPU
    run.save_samples(Path(args.out) / "more-samples.png", n=64, seed=1)
    z = torch.zeros(1, run.config.z_dim)  # the prior's mode
    print(
        f"{len(images)} samples of shape {tuple(images.shape[1:])}; the decoded mode z = 0 has mean pixel "
        f"{run.vae.decode(z).mean():.3f}"
    )

    # 4. Load it back later (in another session), e.g. to continue training with more epochs:
    again = pyro_vae.load_run(args.out)
    assert again.config == run.config
    print(f"reloaded {again.directory}: {again.config.likelihood} VAE, z_dim={again.config.z_dim}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None, help="folder holding the data [default: $PYRO_VAE_DATA]")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--samples", type=int, default=1000, help="importance samples per test image")
    p.add_argument("--subset", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--out", default="runs/first-fit-python")
    p.add_argument("--smoke", action="store_true", help="a few seconds' run on the bundled 8x8 digits (for CI)")
    args = p.parse_args()
    if args.smoke:
        args.dataset, args.epochs, args.samples, args.subset = "digits", 1, 10, 50
    main(args)
