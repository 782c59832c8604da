r"""Likelihood families :math:`p_\theta(x \mid z)` (the decoder's output distribution).

The decoder maps a latent code :math:`z` to ``params_per_dim`` unconstrained numbers per data
dimension; a :class:`Likelihood` turns them into a distribution over one datapoint's ``D``
values, each independent given :math:`z` (the paper's "Bernoulli MLP" and "Gaussian MLP"
decoders, Kingma & Welling 2013, Appendix C). A family also says which data it models and how data
is prepared for it (e.g. binarization for the Bernoulli).

Adding a family is one class and one registration::

    @LIKELIHOODS.register("laplace")
    class Laplace(Likelihood):
        params_per_dim = 2
        domain = "real"
        def distribution(self, params): ...
        def mean(self, params): ...
"""

import inspect

import torch
import torch.nn.functional as F

import pyro.distributions as dist

from .errors import UserError
from .registry import Registry

LIKELIHOODS = Registry("likelihood")

#: Data domains a family may declare, with what they mean, for error messages.
DOMAINS = {
    "binary": "values in {0, 1}",
    "unit": "values in the interval [0, 1]",
    "real": "real values",
}


class Likelihood:
    """Base class of the families :math:`p_\\theta(x \\mid z) = \\prod_d p(x_d \\mid \\eta_d(z))`.

    Subclasses set :attr:`params_per_dim` and :attr:`domain` and implement :meth:`distribution`
    and :meth:`mean`. Options (such as ``binarize``) are constructor keywords and are saved in a
    run's ``config.json`` through :meth:`options`.
    """

    #: How many decoder outputs each data dimension needs (e.g. 2 for a mean and a scale).
    params_per_dim = 1
    #: Which data the family models: a key of :data:`DOMAINS`.
    domain = "real"

    def options(self):
        """The constructor keywords that rebuild this family (saved in ``config.json``)."""
        return {}

    def split(self, params):
        """``(..., P * D)`` decoder outputs -> ``P`` tensors of shape ``(..., D)``."""
        return params.unflatten(-1, (self.params_per_dim, -1)).unbind(-2)

    def distribution(self, params):
        """The distribution of ``x`` given decoder outputs, batch shape ``(..., D)``, no event dims."""
        raise NotImplementedError

    def mean(self, params):
        """:math:`\\mathbb{E}[x \\mid z]`, shape ``(..., D)``: what pictures of samples show."""
        raise NotImplementedError

    # Data preparation ------------------------------------------------------------------------
    def check_data(self, x, what="data"):
        """Refuse data outside the family's support with a :class:`UserError` naming ``what``."""
        if not torch.isfinite(x).all():
            raise UserError(f"{what} contains NaN or infinite values")

    def prepare_static(self, x):
        """A deterministic transform applied once to a whole data set (default: none)."""
        return x

    def prepare_batch(self, x, generator=None):
        """A random transform applied afresh each time a batch is used (default: none).

        ``generator`` (a :class:`torch.Generator`) fixes the draw, as for a test set.
        """
        return x


def _check_unit(x, what, family):
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise UserError(
            f"{what} has values in [{x.min().item():.4g}, {x.max().item():.4g}], but the {family} likelihood "
            "needs values in [0, 1]; rescale the data or choose a family for real values (e.g. gaussian)"
        )


def is_binary(x):
    return bool(((x == 0) | (x == 1)).all())


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    r"""Bernoulli decoder: :math:`\log p(x \mid z) = \sum_d x_d \log \sigma(\ell_d) + (1 - x_d) \log(1 - \sigma(\ell_d))`.

    Parameterized by logits :math:`\ell = f_\theta(z)` for numerical stability. It is a pmf over
    binary data only, so grayscale data in [0, 1] is binarized first:

    - ``dynamic`` (default): each pixel is a fresh draw :math:`x_d \sim \mathrm{Bernoulli}(v_d)`
      each time a batch is used (Burda et al. 2015); a test set is binarized once, with a fixed seed;
    - ``threshold``: :math:`x_d = [v_d > 0.5]`, once;
    - ``none``: the data must already be binary.
    """

    params_per_dim = 1
    domain = "binary"
    BINARIZE = ("dynamic", "threshold", "none")

    def __init__(self, binarize="dynamic"):
        if binarize not in self.BINARIZE:
            raise UserError(f"unknown binarization {binarize!r}; choose one of: {', '.join(self.BINARIZE)}")
        self.binarize = binarize

    def options(self):
        return {"binarize": self.binarize}

    def distribution(self, params):
        return dist.Bernoulli(logits=params)

    def mean(self, params):
        return torch.sigmoid(params)

    def check_data(self, x, what="data"):
        super().check_data(x, what)
        _check_unit(x, what, "bernoulli")
        if self.binarize == "none" and not is_binary(x):
            raise UserError(
                f"{what} is not binary but --binarize none was given: a Bernoulli scores only 0/1 values, "
                "so use --binarize dynamic or threshold, or a family for values in [0, 1]"
            )

    def prepare_static(self, x):
        return (x > 0.5).to(x.dtype) if self.binarize == "threshold" else x

    def prepare_batch(self, x, generator=None):
        return torch.bernoulli(x, generator=generator) if self.binarize == "dynamic" else x


@LIKELIHOODS.register("gaussian")
class Gaussian(Likelihood):
    r"""Gaussian decoder with a learned per-pixel scale (the paper's Frey Face decoder):
    :math:`p(x \mid z) = \prod_d \mathcal{N}(x_d; \mu_d, \sigma_d^2)` with
    :math:`(\mu, \eta) = f_\theta(z)` and :math:`\sigma_d = \sigma_{\min} + \mathrm{softplus}(\eta_d)`.

    The floor :math:`\sigma_{\min}` (``min_scale``, default 0.01) keeps the density finite on
    pixels that never vary (a constant pixel would otherwise drive :math:`\sigma \to 0` and the
    ELBO to infinity). It is a density, so its ELBO can be positive and is not comparable with a
    Bernoulli's pmf.
    """

    params_per_dim = 2
    domain = "real"

    def __init__(self, min_scale=0.01):
        if not min_scale > 0:
            raise UserError(f"the gaussian likelihood needs min_scale > 0, got {min_scale}")
        self.min_scale = float(min_scale)

    def options(self):
        return {"min_scale": self.min_scale}

    def distribution(self, params):
        loc, raw_scale = self.split(params)
        return dist.Normal(loc, self.min_scale + F.softplus(raw_scale))

    def mean(self, params):
        return self.split(params)[0]


def build_likelihood(name, **options):
    """The family registered as ``name``, constructed with the options it accepts."""
    cls = LIKELIHOODS.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted and v is not None})
