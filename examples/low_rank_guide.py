#!/usr/bin/env python
"""Write your own guide: a low-rank-plus-diagonal Gaussian q(z|x), registered and trained by name.

The paper's guide has a diagonal covariance: the posterior's correlations between latent
dimensions are ignored. This guide adds a rank-``r`` factor,

    q(z | x) = N(mu(x), W(x) W(x)^T + diag(d(x))),   W(x) of shape (z_dim, r),

which keeps sampling and scoring cheap (O(z_dim r^2)) and is reparameterized (``rsample``), so
every objective that differentiates through samples can train it. The script trains it next to
the diagonal guide, with the same model, data and budget, and compares their test numbers.

    python examples/low_rank_guide.py --data-dir ~/data
"""

import argparse

import torch.nn.functional as F

import pyro.distributions as dist

import pyro_vae
from pyro_vae import GUIDES, Guide
from pyro_vae.nets import MLP


@GUIDES.register("low-rank-mvn")
class LowRankGuide(Guide):
    r"""A Gaussian with a low-rank-plus-diagonal covariance,
    :math:`\mathcal{N}(\mu(x), W(x) W(x)^\top + \operatorname{diag} d(x))`.

    :param int rank: the rank :math:`r` of the factor :math:`W(x)`.
    """

    def __init__(self, x_dim, z_dim, hidden, activation="tanh", rank=2):
        super().__init__(x_dim, z_dim, hidden, activation)
        self.rank = rank
        # one network computes all the parameters: mu (z_dim), d (z_dim) and W (z_dim * rank)
        self.net = MLP(x_dim, hidden, z_dim * (2 + rank), activation)

    def options(self):
        return {"rank": self.rank}

    def forward(self, x):
        loc, raw_diag, factor = self.net(x).split([self.z_dim, self.z_dim, self.z_dim * self.rank], dim=-1)
        factor = factor.unflatten(-1, (self.z_dim, self.rank)) / self.rank**0.5
        # batch_shape (B,), event_shape (z_dim,): what the model's site "z" expects
        return dist.LowRankMultivariateNormal(loc, factor, F.softplus(raw_diag) + 1e-5)


def main(args):
    for guide in ("diagonal", "low-rank-mvn"):
        run = pyro_vae.fit(
            dataset=args.dataset,
            data_dir=args.data_dir,
            guide=guide,
            z_dim=args.z_dim,
            hidden=args.hidden,
            epochs=args.epochs,
            seed=0,
            out=f"{args.out}/{guide}",
            overwrite=True,
            quiet=True,
        )
        result = run.evaluate(samples=args.samples, subset=args.subset)
        print(
            f"{guide:14s} test ELBO {result['test_elbo']:8.2f}   log p(x) {result['test_log_likelihood']:8.2f}   "
            f"gap {result['test_log_likelihood'] - result['test_elbo']:5.2f} nats"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None, help="folder holding the data [default: $PYRO_VAE_DATA]")
    p.add_argument("--z-dim", type=int, default=10)
    p.add_argument("--hidden", default="400")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--samples", type=int, default=1000, help="importance samples per test image")
    p.add_argument("--subset", type=int, default=1000, help="evaluate on the first N test images")
    p.add_argument("--out", default="runs/low-rank-guide")
    p.add_argument("--smoke", action="store_true", help="a few seconds' run on the bundled 8x8 digits (for CI)")
    args = p.parse_args()
    if args.smoke:
        args.dataset, args.epochs, args.samples, args.subset = "digits", 1, 10, 50
    main(args)
