r"""Likelihood families :math:`p_\theta(x \mid z)` (the decoder's output distribution).

The decoder maps a latent code :math:`z` to ``params_per_dim`` unconstrained numbers per data
dimension; a :class:`Likelihood` turns them into a distribution over one datapoint's ``D``
values, each independent given :math:`z` (the paper's "Bernoulli MLP" and "Gaussian MLP"
decoders, Kingma & Welling 2013, Appendix C). A family also says which data it models
(:attr:`~Likelihood.domain`), whether its scores are probabilities of discrete data or densities
(:attr:`~Likelihood.discrete`), and how data is prepared for it.

**Which data each family scores.** Images are stored as levels :math:`v = k / (L - 1)`,
:math:`k \in \{0, \dots, L-1\}` (:attr:`pyro_vae.data.dataset.Dataset.levels`: 256 for 8-bit pixels).

- ``bernoulli`` is a pmf on binary data: grayscale data is binarized first, so it scores
  *different data* from the other families (unless the data set is binary, :math:`L = 2`).
- ``discretized-logistic`` is a pmf on the :math:`L` levels themselves.
- The densities (``continuous-bernoulli``, ``gaussian``, ``gaussian-fixed``, ``laplace``,
  ``beta``) are trained and scored on uniformly dequantized data :math:`y = (k + u) / L`,
  :math:`u \sim \mathcal{U}[0, 1)^D`, drawn afresh for each training batch and once, with a fixed
  seed, for the test set (Uria et al. 2013; Theis et al. 2016). Then, for the pmf
  :math:`P(k) = \int_{[0,1)^D} p((k + u)/L)\,L^{-D}\,du` that the density induces on the levels,

  .. math::

      \log P(k) \;\ge\; \mathbb{E}_u\!\left[\log p\!\left(\tfrac{k + u}{L}\right)\right] - D \log L

  (Jensen), so a density's score minus :math:`D \log L` (:meth:`Likelihood.dequantization_nats`)
  lower-bounds a log-probability of the same discrete data that ``discretized-logistic`` scores,
  and the two share one scale of nats and bits per dimension. On data with no known quantization
  (``levels=None``, e.g. a user's real-valued array) the densities score the values as given.

Adding a family is one class and one registration::

    @LIKELIHOODS.register("student-t")
    class StudentT(Density):
        params_per_dim = 2
        domain = "real"
        def distribution(self, params): ...
        def mean(self, params): ...
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F

import pyro.distributions as dist
from pyro.distributions.torch_distribution import TorchDistributionMixin

from ..errors import UserError
from ..registry import Registry
from ..user_code import resolve_class
from .distributions import ContinuousBernoulli as _ContinuousBernoulli
from .distributions import DiscretizedLogistic as _DiscretizedLogistic
from .distributions import DiscretizedLogisticMixture as _DiscretizedLogisticMixture
from .preprocessing import DOMAINS, Binarize, Dequantize, Levels, Preparation

__all__ = ["DOMAINS", "LIKELIHOODS", "Density", "Likelihood", "build_likelihood", "likelihood_class",
           "likelihood_options"]

LIKELIHOODS = Registry("likelihood")


class Likelihood:
    """Base class of the families :math:`p_\\theta(x \\mid z) = \\prod_d p(x_d \\mid \\eta_d(z))`.

    Subclasses set :attr:`params_per_dim`, :attr:`domain` and :attr:`discrete` and implement
    :meth:`distribution` and :meth:`mean`. Options (such as ``binarize``) are constructor keywords
    and are saved in a run's ``config.json`` through :meth:`options`. The quantization of the data
    (``levels``) is not an option but a property of the data set, given to the constructor by
    whoever knows the data (:func:`build_likelihood`), and fixed from then on.

    :param int levels: the data's number of levels ``L`` (values ``k/(L-1)``), ``None`` for continuous data.
    :raises UserError: for a ``levels`` that is not an integer of at least 2.
    """

    #: How many decoder outputs each data dimension needs (e.g. 2 for a mean and a scale).
    params_per_dim: int = 1
    #: Which data the family models: a key of :data:`DOMAINS`.
    domain: str = "real"
    #: True for a pmf (its log-likelihoods are log-probabilities, at most 0), False for a density.
    discrete: bool = False
    #: Number of levels ``L`` of the data (values ``k / (L-1)``); ``None`` for continuous data.
    levels: int | None = None

    #: the registered name (set by :meth:`~pyro_vae.registry.Registry.register`; a user's class given as
    #: ``file.py:Name`` is named by that spec)
    name: str | None = None

    def __init__(self, levels: int | None = None) -> None:
        if levels is not None:
            if int(levels) != levels or levels < 2:
                raise UserError(f"the number of data levels must be an integer of at least 2, got {levels}")
            levels = int(levels)
        self.levels = levels

    def options(self) -> dict[str, Any]:
        """The constructor keywords that rebuild this family (saved in ``config.json``), ``levels`` aside."""
        return {}

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(..., P * D)`` decoder outputs -> ``P`` tensors of shape ``(..., D)``."""
        return params.unflatten(-1, (self.params_per_dim, -1)).unbind(-2)

    def distribution(self, params: torch.Tensor) -> TorchDistributionMixin:
        """The distribution of ``x`` given decoder outputs, batch shape ``(..., D)``, no event dims."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathbb{E}[x \\mid z]`, shape ``(..., D)``: what pictures of samples show."""
        raise NotImplementedError

    # What the scores mean ---------------------------------------------------------------------
    def dequantization_nats(self, x_dim: int) -> float:
        """Nats to subtract from a score to make it a log-probability of the ``L``-level data.

        :math:`D \\log L` for a density on dequantized data, 0 for a pmf or continuous data.
        """
        return 0.0

    def scored_data(self) -> str:
        """Which discrete data the family's scores are probabilities of: ``"binarized"``,
        ``"<L> levels"``, or ``"continuous"`` (a density on data with no known quantization).
        Scores are comparable only between families with the same answer."""
        return f"{self.levels} levels" if self.levels is not None else "continuous"

    def representation(self) -> str:
        """A short description of the data the family is trained and scored on (for tables)."""
        return self.scored_data()

    # Data preparation (pyro_vae.vae.preprocessing) -------------------------------------------------
    def preparation(self) -> Preparation:
        """The :class:`~pyro_vae.vae.preprocessing.Preparation` this family's data needs (default: checks only)."""
        return Preparation(self.name, self.levels)

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Refuse data outside the family's support with a :class:`UserError` naming ``what``."""
        self._prep.check(x, what)

    def prepare_static(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic preparation, applied once to a whole data set."""
        return self._prep.static(x)

    def prepare_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The random preparation, applied afresh each time a batch is used (``generator`` fixes the draw)."""
        return self._prep.batch(x, generator)

    @property
    def _prep(self) -> Preparation:
        prep = self.__dict__.get("_preparation")
        if prep is None:
            prep = self.__dict__["_preparation"] = self.preparation()
        return prep


# A pmf on binary data ---------------------------------------------------------------------------


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    r"""Bernoulli decoder: :math:`\log p(x \mid z) = \sum_d x_d \log \sigma(\ell_d) + (1 - x_d) \log(1 - \sigma(\ell_d))`.

    Parameterized by logits :math:`\ell = f_\theta(z)` for numerical stability. It is a pmf over
    binary data only, so grayscale data in [0, 1] is binarized first:

    - ``dynamic`` (default): each pixel is a fresh draw :math:`x_d \sim \mathrm{Bernoulli}(v_d)`
      each time a batch is used (Burda et al. 2015); a test set is binarized once, with a fixed seed;
    - ``threshold``: :math:`x_d = [v_d > 0.5]`, once;
    - ``none``: the data must already be binary.

    Its scores are log-probabilities of the *binarized* pixels, not of the grayscale ones: they are
    not comparable with those of the families that score the grayscale levels (Loaiza-Ganem &
    Cunningham 2019: a Bernoulli on grayscale values is not a likelihood at all).
    """

    params_per_dim = 1
    domain = "binary"
    discrete = True
    BINARIZE = Binarize.MODES

    def __init__(self, binarize="dynamic", levels=None):
        super().__init__(levels)
        if binarize not in self.BINARIZE:
            raise UserError(f"unknown binarization {binarize!r}; choose one of: {', '.join(self.BINARIZE)}")
        self.binarize = binarize

    def options(self):
        return {"binarize": self.binarize}

    def distribution(self, params):
        return dist.Bernoulli(logits=params)

    def mean(self, params):
        return torch.sigmoid(params)

    def scored_data(self):
        return "2 levels" if self.levels == 2 or self.binarize == "none" else "binarized"

    def representation(self):
        if self.scored_data() == "2 levels":
            return "binary data"
        source = f"{self.levels}-level data" if self.levels else "data"
        return f"binarized ({self.binarize}) {source}"

    def preparation(self):
        return Binarize(self.name, self.levels, self.binarize)


# Densities ---------------------------------------------------------------------------------------


class Density(Likelihood):
    """Base class of the families that are densities on continuous values.

    On quantized data (``levels`` known) a batch is dequantized afresh each time it is used
    (:func:`dequantize`), and the test set once with a fixed seed; :meth:`dequantization_nats`
    is then :math:`D \\log L`. On continuous data the values are used as given.
    """

    discrete = False

    def dequantization_nats(self, x_dim: int) -> float:
        return x_dim * math.log(self.levels) if self.levels is not None else 0.0

    def representation(self) -> str:
        if self.levels is None:
            return "continuous data as given"
        return f"{self.levels}-level data, dequantized (k+u)/{self.levels}"

    #: clamp prepared data into [clamp, 1 - clamp] (for a density infinite at 0 and 1), or None
    clamp: float | None = None

    def preparation(self) -> Preparation:
        return Dequantize(self.name, self.levels, self.domain, self.clamp)


@LIKELIHOODS.register("continuous-bernoulli")
class ContinuousBernoulli(Density):
    r"""Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): the Bernoulli's form made a density on [0, 1],

    .. math::

        p(x \mid \lambda) = C(\lambda)\,\lambda^x (1 - \lambda)^{1 - x}, \qquad
        C(\lambda) = \frac{2\,\mathrm{atanh}(1 - 2\lambda)}{1 - 2\lambda}, \quad C(\tfrac12) = 2,

    with :math:`\lambda = \sigma(\ell)`, :math:`\ell = f_\theta(z)`: the Bernoulli's "BCE on
    grayscale pixels" plus the normalizing constant it omits. Computed from the logit for every
    value (see :class:`pyro_vae.vae.distributions.ContinuousBernoulli`; PyTorch's clamps
    :math:`\lambda` and loses normalization for :math:`|\ell| > 16`). Its mean is not
    :math:`\lambda` but :math:`\frac{1}{1 - e^{-\ell}} - \frac{1}{\ell}`.
    """

    params_per_dim = 1
    domain = "unit"

    def distribution(self, params):
        return _ContinuousBernoulli(logits=params)

    def mean(self, params):
        return self.distribution(params).mean


class ScaleFloor(Density):
    r"""A density with a learned scale :math:`s = s_{\min} + \mathrm{softplus}(\eta)` bounded below by ``min_scale``
    (default 0.01), which keeps the density finite on pixels that never vary.

    On dequantized 8-bit data the floor also caps the density of a constant pixel (MNIST's
    background) at :math:`1/(0.01\sqrt{2\pi})`, about 1.9 nats below the :math:`\log 256` of the
    uniform bin it is spread over. A smaller floor is not better at small budgets, though: light
    tails punish the pixels that a too-confident scale gets wrong (measured on MNIST: docs/benchmarks.md,
    "Measurements cited by the code"). ``--min-scale`` sets it.
    """

    def __init__(self, min_scale=0.01, levels=None):
        super().__init__(levels)
        if not _positive(min_scale):
            raise UserError(f"the {self.name} likelihood needs --min-scale > 0, got {min_scale!r}")
        self.min_scale = float(min_scale)

    def options(self):
        return {"min_scale": self.min_scale}


@LIKELIHOODS.register("gaussian")
class Gaussian(ScaleFloor):
    r"""Gaussian decoder with a learned per-pixel scale (the paper's Frey Face decoder):
    :math:`p(x \mid z) = \prod_d \mathcal{N}(x_d; \mu_d, \sigma_d^2)` with
    :math:`(\mu, \eta) = f_\theta(z)` and :math:`\sigma_d = \sigma_{\min} + \mathrm{softplus}(\eta_d)`.

    The floor :math:`\sigma_{\min}` (``min_scale``) keeps the density finite on pixels that never
    vary (a constant pixel would otherwise drive :math:`\sigma \to 0` and the ELBO to infinity);
    see :class:`ScaleFloor`. It is a density, so its ELBO can be positive and is
    not comparable with a Bernoulli's pmf.
    """

    params_per_dim = 2
    domain = "real"

    def distribution(self, params):
        loc, raw_scale = self.split(params)
        return dist.Normal(loc, self.min_scale + F.softplus(raw_scale))

    def mean(self, params):
        return self.split(params)[0]


@LIKELIHOODS.register("gaussian-fixed")
class GaussianFixed(Density):
    r"""Gaussian decoder with one fixed scale: :math:`p(x \mid z) = \prod_d \mathcal{N}(x_d; \mu_d, \sigma^2)`.

    :math:`\mu = f_\theta(z)`; :math:`\sigma` is ``--sigma`` (default 0.1). Up to a constant,
    :math:`-\log p = \lVert x - \mu \rVert^2 / 2\sigma^2`: the "MSE loss" of many VAE codes, where
    :math:`\sigma` silently weighs reconstruction against the KL term. With a linear decoder it is
    probabilistic PCA (Tipping & Bishop 1999).
    """

    params_per_dim = 1
    domain = "real"

    def __init__(self, sigma=0.1, levels=None):
        super().__init__(levels)
        if not _positive(sigma):
            raise UserError(f"the gaussian-fixed likelihood needs --sigma > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def options(self):
        return {"sigma": self.sigma}

    def distribution(self, params):
        return dist.Normal(params, torch.full_like(params, self.sigma))

    def mean(self, params):
        return params


@LIKELIHOODS.register("laplace")
class Laplace(ScaleFloor):
    r"""Laplace decoder: :math:`p(x \mid z) = \prod_d \frac{1}{2 b_d} e^{-|x_d - \mu_d| / b_d}`,
    :math:`(\mu, \eta) = f_\theta(z)`, :math:`b_d = b_{\min} + \mathrm{softplus}(\eta_d)`, with
    :math:`b_{\min}` = ``min_scale``: the "L1 loss" with a learned scale, more robust to outlying
    pixels than the Gaussian. The floor's default is that of :class:`ScaleFloor`.
    """

    params_per_dim = 2
    domain = "real"

    def distribution(self, params):
        loc, raw_scale = self.split(params)
        return dist.Laplace(loc, self.min_scale + F.softplus(raw_scale))

    def mean(self, params):
        return self.split(params)[0]


@LIKELIHOODS.register("beta")
class Beta(Density):
    r"""Beta decoder: :math:`p(x \mid z) = \prod_d \mathrm{Beta}(x_d; \alpha_d, \beta_d)` on the open interval (0, 1),
    :math:`\alpha = c_{\min} + \mathrm{softplus}(a)`, :math:`\beta = c_{\min} + \mathrm{softplus}(b)`,
    :math:`(a, b) = f_\theta(z)`, :math:`c_{\min} = 10^{-3}`. Mean :math:`\alpha / (\alpha + \beta)`.

    Its density is infinite or zero at 0 and 1, so prepared data is clamped into
    :math:`[\epsilon, 1 - \epsilon]`, :math:`\epsilon = 10^{-6}`, after dequantization (which
    alone can give exactly 0). A dequantized value lands in the clamped margin with probability
    :math:`\le \epsilon L` per pixel; there the bound of the module docstring holds only approximately.
    """

    params_per_dim = 2
    domain = "open-unit"
    EPS = 1e-6
    clamp = EPS
    MIN_CONCENTRATION = 1e-3

    def distribution(self, params):
        a, b = self.split(params)
        return dist.Beta(self.MIN_CONCENTRATION + F.softplus(a), self.MIN_CONCENTRATION + F.softplus(b))

    def mean(self, params):
        a, b = self.split(params)
        alpha, beta = self.MIN_CONCENTRATION + F.softplus(a), self.MIN_CONCENTRATION + F.softplus(b)
        return alpha / (alpha + beta)


# A pmf on the levels of quantized data ----------------------------------------------------------


@LIKELIHOODS.register("discretized-logistic")
class DiscretizedLogistic(Likelihood):
    r"""Discretized logistic: a pmf over the :math:`L` levels of quantized data (IAF, Kingma et al.
    2016; PixelCNN++, Salimans et al. 2017), see :class:`pyro_vae.vae.distributions.DiscretizedLogistic`.

    :math:`(\mu, \eta) = f_\theta(z)` on the scale of the data, :math:`s = s_{\min} + \mathrm{softplus}(\eta)`
    with :math:`s_{\min} = 0.1 / (L - 1)`, a tenth of a bin (PixelCNN++ clamps the log-scale at
    :math:`-7`, about 0.12 bins). The edge bins reach to :math:`\mp\infty`, so a pixel at 0 or 255
    can have probability near one. Needs quantized data (``levels`` known); the data is used as is.
    """

    params_per_dim = 2
    domain = "levels"
    discrete = True
    #: levels assumed when none were declared (8-bit data)
    DEFAULT_LEVELS = 256

    @property
    def num_levels(self):
        return self.levels or self.DEFAULT_LEVELS

    def distribution(self, params):
        loc, raw_scale = self.split(params)
        scale = 0.1 / (self.num_levels - 1) + F.softplus(raw_scale)
        return _DiscretizedLogistic(loc, scale, self.num_levels)

    def mean(self, params):
        return self.distribution(params).mean

    def scored_data(self):
        return f"{self.num_levels} levels"

    def representation(self):
        return f"{self.num_levels}-level data (exact pmf)"

    def preparation(self):
        return Levels(self.name, self.levels)


def likelihood_class(spec: str | type[Likelihood]) -> type[Likelihood]:
    """The family class ``spec`` names: a registered name, or the user's own class as an import spec
    ``path/to/file.py:Name`` / ``package.module:Name`` (``--likelihood my_families.py:StudentT``, which
    runs that file), a subclass of :class:`Likelihood` (or :class:`Density`); a class is returned as it is.

    :raises UserError: an unknown name, a file that fails to load, or an object that is not such a class.
    """
    return resolve_class(spec, LIKELIHOODS, "likelihood",
                         lambda obj: isinstance(obj, type) and issubclass(obj, Likelihood),
                         "a class", "a subclass of pyro_vae.Likelihood (or pyro_vae.Density)")  # fmt: skip


def _positive(value):
    """True for a number (not a bool, not text) above 0: options from a config file or Python arrive unchecked."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0


def likelihood_options(name: str | type[Likelihood]) -> dict[str, Any]:
    """The option keywords (and their defaults) of the family ``name`` names (a registered name or an
    import spec, see :func:`likelihood_class`), ``levels`` aside."""
    parameters = inspect.signature(likelihood_class(name).__init__).parameters
    return {
        k: p.default for k, p in parameters.items()
        if k not in ("self", "levels") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }  # fmt: skip


def build_likelihood(name: str | type[Likelihood], levels: int | None = None, **options: Any) -> Likelihood:
    """The family registered as ``name`` for data with ``levels`` levels, with its keyword ``options``.

    Options whose value is ``None`` take the family's defaults.

    :raises UserError: for an unknown family, or an option the family does not take.
    """
    cls = likelihood_class(name)
    accepted = likelihood_options(cls)
    options = {k: v for k, v in options.items() if v is not None}
    for key in options:
        if key not in accepted:
            flag = "--" + key.replace("_", "-")
            takes = f" (it takes {', '.join(accepted)})" if accepted else " (it takes no options)"
            raise UserError(f"{flag} does not apply to the {name} likelihood{takes}")
    try:
        family = cls(levels=levels, **options)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"could not build the likelihood {name}: {type(e).__name__}: {e} (a family's constructor "
                        "receives levels and its own keyword options; see docs/guides.md)") from None  # fmt: skip
    if "name" not in vars(cls) and isinstance(name, str):  # a user's class, not registered: named by its spec
        family.name = name
    return family


# A mixture of discretized logistics -------------------------------------------------------------

@LIKELIHOODS.register("discretized-logistic-mixture")
class DiscretizedLogisticMixture(DiscretizedLogistic):
    r"""A mixture of ``mixtures`` = :math:`K` discretized logistics per data dimension (PixelCNN++,
    Salimans et al. 2017, eq. 2), see :class:`pyro_vae.vae.distributions.DiscretizedLogisticMixture`.

    The decoder gives :math:`3K` numbers per data dimension, laid out as the :math:`3K` blocks of
    ``(..., 3K * D)`` that :meth:`Likelihood.split` cuts (block-major: all of block 0, then block 1,
    ...): blocks :math:`0..K-1` are the mixture-weight logits, :math:`K..2K-1` the locations
    :math:`\mu_i` (on the scale of the data) and :math:`2K..3K-1` the raw scales
    :math:`\eta_i`, :math:`s_i = s_{\min} + \mathrm{softplus}(\eta_i)` with the floor
    :math:`s_{\min} = 0.1/(L-1)` of :class:`DiscretizedLogistic`. For a convolutional decoder with
    ``3K * C`` output channels, flattening ``(..., 3K*C, H, W)`` row-major gives exactly this layout.

    Each dimension (each channel of each pixel) has its own mixture, independent of the other
    channels given :math:`z` (no PixelCNN++ channel coefficients). Same data conventions as
    ``discretized-logistic``: a pmf over the :math:`L` levels, needs quantized data, data used as is.

    :param int mixtures: :math:`K \ge 1` (default 5; PixelCNN++ uses 10). ``mixtures=1`` is
        ``discretized-logistic`` with one extra, irrelevant, weight logit per dimension.
    :raises UserError: for a ``mixtures`` that is not a positive integer.
    """

    def __init__(self, mixtures=5, levels=None):
        super().__init__(levels)
        if not _positive(mixtures) or not float(mixtures).is_integer():
            raise UserError(f"the discretized-logistic-mixture likelihood needs a whole --mixtures of at least 1, got {mixtures!r}")
        self.mixtures = int(mixtures)
        self.params_per_dim = 3 * self.mixtures

    def options(self):
        return {"mixtures": self.mixtures}

    def components(self, params):
        """``(..., 3K * D)`` -> logits, locs, raw scales, each of shape ``(..., D, K)``."""
        blocks = params.unflatten(-1, (self.params_per_dim, -1)).movedim(-2, -1)  # (..., D, 3K)
        return blocks.split(self.mixtures, dim=-1)

    def distribution(self, params):
        logits, loc, raw_scale = self.components(params)
        scale = 0.1 / (self.num_levels - 1) + F.softplus(raw_scale)
        return _DiscretizedLogisticMixture(logits, loc, scale, self.num_levels)

    def representation(self):
        return f"{self.num_levels}-level data (exact pmf, mixture of {self.mixtures})"
