#!/usr/bin/env python
r"""Swap in your own guide q(z|x): a residual encoder and a mixture-of-Gaussians encoder.

Each guide is one class following the guide contract (docs/guides.md): the constructor receives
``(x_dim, z_dim, hidden, activation)``; ``forward(x)`` returns a distribution over ``z`` with
``batch_shape (B,)`` and ``event_shape (z_dim,)``; its nets are submodules. The model, its site
names and the training loop do not change.

- :class:`ResidualGuide`: a Gaussian whose mean and scale come from a residual MLP,
  :math:`h_{l+1} = h_l + W_2\,\mathrm{act}(W_1\,\mathrm{LayerNorm}(h_l))` (He et al. 2016), trained with
  the default ``elbo`` (it is reparameterized).
- :class:`MixtureGuide`: :math:`q(z \mid x) = \sum_c \pi_c(x)\,\mathcal{N}(z; \mu_c(x), \mathrm{diag}\,\sigma_c^2(x))`.
  A draw picks a component, which has no reparameterization, so ``elbo``/``iwae`` refuse it with a
  clear error; reweighted wake-sleep (``--objective rws``) trains it, since it needs only
  :math:`\log q` of fixed draws.

Both are trained from Python (``GUIDES.register`` + ``fit``) and from the command line
(``--guide examples/custom_guide.py:ResidualGuide``), then compared on the same test numbers::

    python examples/custom_guide.py            # digits, 20 epochs each
    python examples/custom_guide.py --smoke    # 1 epoch each, seconds (what the tests run)

The CLI equivalent of the second training run is::

    pyro-vae fit --dataset digits --guide examples/custom_guide.py:ResidualGuide --epochs 20
"""

import argparse
import shlex
from pathlib import Path

import torch.nn as nn
import torch.nn.functional as F

import pyro.distributions as dist

from pyro_vae import GUIDES, Guide, UserError, fit
from pyro_vae.cli import main as cli_main
from pyro_vae.nets import ACTIVATIONS


class ResidualBlock(nn.Module):
    """:math:`h + W_2\\,\\mathrm{act}(W_1\\,\\mathrm{LayerNorm}(h))`: a pre-norm residual block."""

    def __init__(self, width, activation):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Sequential(nn.Linear(width, width), ACTIVATIONS[activation](), nn.Linear(width, width))

    def forward(self, h):
        return h + self.inner(self.norm(h))


class ResidualGuide(Guide):
    """A diagonal Gaussian from a residual encoder with ``blocks`` blocks of width ``hidden[-1]``."""

    def __init__(self, x_dim, z_dim, hidden, activation="relu", blocks=2):
        super().__init__(x_dim, z_dim, hidden, activation)
        width = hidden[-1]
        self.blocks = blocks
        self.embed = nn.Linear(x_dim, width)
        self.body = nn.Sequential(*(ResidualBlock(width, activation) for _ in range(blocks)))
        self.head = nn.Linear(width, 2 * z_dim)

    def options(self):
        return {"blocks": self.blocks}

    def forward(self, x):
        loc, raw_scale = self.head(self.body(self.embed(x))).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw_scale) + 1e-5).to_event(1)


class MixtureGuide(Guide):
    """A mixture of ``components`` diagonal Gaussians with weights, means and scales from one MLP."""

    def __init__(self, x_dim, z_dim, hidden, activation="relu", components=3):
        super().__init__(x_dim, z_dim, hidden, activation)
        self.components = components
        layers, size = [], x_dim
        for width in hidden:
            layers += [nn.Linear(size, width), ACTIVATIONS[activation]()]
            size = width
        self.body = nn.Sequential(*layers)
        self.logits = nn.Linear(size, components)
        self.loc_scale = nn.Linear(size, 2 * components * z_dim)

    def forward(self, x):
        h = self.body(x)
        loc, raw_scale = self.loc_scale(h).reshape(*h.shape[:-1], self.components, 2 * self.z_dim).chunk(2, dim=-1)
        parts = dist.Normal(loc, F.softplus(raw_scale) + 1e-5).to_event(1)  # batch (B, C), event (z_dim,)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits(h)), parts)


def summary(name, run):
    result = run.evaluate(samples=200)
    print(
        f"{name:38s} test ELBO {result['test_elbo']:8.3f}   log p(x) >= {result['test_log_likelihood']:8.3f} "
        f"nats ({result['samples']} importance samples, {result['items']} items)"
    )
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="1 epoch each: a quick check that everything runs")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="runs/custom-guide", help="folder for the run folders")
    args = parser.parse_args(argv)
    epochs = 1 if args.smoke else args.epochs
    out = Path(args.out)
    common = dict(dataset="digits", hidden="64", z_dim=4, epochs=epochs, quiet=True, overwrite=True)
    results = {}

    # 1. From Python: register the classes under names, then use the names like built-in guides
    #    (a run trained so reloads with load_run only where the same registration has run).
    for name, cls in [("residual", ResidualGuide), ("mixture", MixtureGuide)]:
        if name not in GUIDES:
            GUIDES.register(name, cls)
    results["diagonal (built in), elbo"] = summary(
        "diagonal (built in), elbo", fit(guide="diagonal", out=out / "diagonal", **common)
    )
    results["residual (Python), elbo"] = summary(
        "residual (Python), elbo", fit(guide="residual", out=out / "residual", **common)
    )

    # The mixture cannot be reparameterized: elbo refuses it with a clear message...
    try:
        fit(guide="mixture", out=out / "mixture-elbo", **common)
    except UserError as e:
        print(f"mixture with elbo refused, as it should be: {e}")
    # ...and reweighted wake-sleep trains it.
    results["mixture (Python), rws K=5"] = summary(
        "mixture (Python), rws K=5",
        fit(guide="mixture", objective="rws", particles=5, out=out / "mixture-rws", **common),
    )

    # 2. From the command line: name the class by file and class name; nothing is registered.
    command = [
        "fit", "--dataset", "digits", "--hidden", "64", "--z-dim", "4", "--epochs", str(epochs),
        "--guide", f"{Path(__file__).resolve()}:ResidualGuide", "--out", str(out / "residual-cli"),
        "--overwrite", "--quiet",
    ]  # fmt: skip
    print("$ pyro-vae " + shlex.join(command))
    code = cli_main(command)
    if code != 0:
        raise SystemExit(code)
    from pyro_vae import load_run

    results["residual (CLI), elbo"] = summary("residual (CLI), elbo", load_run(out / "residual-cli"))
    return results


if __name__ == "__main__":
    main()
