r"""Two per-pixel distributions that Pyro lacks or computes inexactly, written as Pyro distributions.

:class:`ContinuousBernoulli`
    The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) parameterized by its natural
    parameter :math:`\eta` (the "logit"), with the normalizer computed from :math:`\eta` itself.
    On :math:`[0, 1]`,

    .. math::

        p(x \mid \eta) = \frac{e^{\eta x}}{Z(\eta)}, \qquad
        Z(\eta) = \int_0^1 e^{\eta x}\,dx = \frac{e^\eta - 1}{\eta}, \qquad Z(0) = 1,

    which is the paper's :math:`C(\lambda)\,\lambda^x (1-\lambda)^{1-x}` with
    :math:`\lambda = \sigma(\eta)` and :math:`C(\lambda) = 2\,\mathrm{atanh}(1 - 2\lambda) / (1 - 2\lambda)`.
    :class:`torch.distributions.ContinuousBernoulli` computes :math:`\log C` from
    :math:`\lambda` clamped to :math:`[\epsilon, 1 - \epsilon]` (float32: :math:`|\eta| \lesssim 15.9`),
    so for a saturated logit its density is no longer normalized: at :math:`\eta = -30` it is
    short by :math:`\log(30 / 15.9) \approx 0.63` nats per pixel, and a VAE on MNIST's background
    pixels (dequantized to :math:`[0, 1/256)`, where the best :math:`\eta` is near :math:`-256`) is
    short by about 2.8 nats per pixel. Here :math:`\log Z` is evaluated stably for every
    :math:`\eta` (a Taylor series near 0, where the closed form is 0/0), and so are the mean, the
    variance, the CDF and its inverse (used for sampling).

:class:`DiscretizedLogistic`
    A pmf over the :math:`L` levels :math:`v_k = k / (L - 1)` of quantized data (:math:`L = 256`
    for 8-bit pixels), as in IAF (Kingma et al. 2016) and PixelCNN++ (Salimans et al. 2017): the
    mass of a logistic density on the bin :math:`[v_k - \delta, v_k + \delta]`,
    :math:`\delta = 1 / (2(L - 1))`, with the edge bins extended to :math:`\mp\infty` so that the
    masses of the :math:`L` levels sum to exactly one.
"""

import torch
import torch.nn.functional as F
from torch.distributions import constraints

import pyro.distributions as dist
from pyro.distributions.torch_distribution import TorchDistribution

# Continuous Bernoulli ----------------------------------------------------------------------------

#: below these |eta| the closed forms cancel catastrophically in float32; Taylor series are used
_CB_TAYLOR = 0.1
_CB_VAR_TAYLOR = 0.5


def _safe(eta, small, fill=1.0):
    """``eta`` with the entries where ``small`` replaced by ``fill``: keeps NaNs out of unused branches."""
    return torch.where(small, torch.full_like(eta, fill), eta)


def cb_log_normalizer(eta):
    r""":math:`\log Z(\eta) = \log\frac{e^\eta - 1}{\eta}`, stable for all real :math:`\eta`.

    For :math:`|\eta| \ge 0.1`: :math:`\max(\eta, 0) + \log(-\mathrm{expm1}(-|\eta|)) - \log|\eta|`;
    below, :math:`\eta/2 + \eta^2/24 - \eta^4/2880` (next term :math:`\eta^6/181440 < 10^{-11}`).
    """
    small = eta.abs() < _CB_TAYLOR
    a = _safe(eta, small).abs()
    closed = eta.clamp(min=0) + torch.log(-torch.expm1(-a)) - torch.log(a)
    eta2 = eta * eta
    taylor = eta / 2 + eta2 / 24 - eta2 * eta2 / 2880
    return torch.where(small, taylor, closed)


def cb_mean(eta):
    r""":math:`\mathbb{E}[x] = \frac{1}{1 - e^{-\eta}} - \frac{1}{\eta}`; near 0, :math:`\frac12 + \frac{\eta}{12} - \frac{\eta^3}{720}`."""
    small = eta.abs() < _CB_TAYLOR
    e = _safe(eta, small)
    closed = 1 / (-torch.expm1(-e)) - 1 / e
    return torch.where(small, 0.5 + eta / 12 - eta**3 / 720, closed)


def cb_variance(eta):
    r""":math:`\mathrm{Var}[x] = \frac{1}{\eta^2} - \frac{1}{4\sinh^2(\eta/2)}`; near 0, :math:`\frac1{12} - \frac{\eta^2}{240} + \frac{\eta^4}{6048}`."""
    small = eta.abs() < _CB_VAR_TAYLOR
    e = _safe(eta, small)
    closed = 1 / (e * e) - 1 / (4 * torch.sinh(e / 2) ** 2)
    eta2 = eta * eta
    return torch.where(small, 1 / 12 - eta2 / 240 + eta2 * eta2 / 6048, closed)


class ContinuousBernoulli(dist.ContinuousBernoulli):
    r"""The continuous Bernoulli with an exact normalizer for every logit (see the module docstring).

    Construct it with ``logits=`` (the natural parameter :math:`\eta`); ``probs=`` works too but
    is clamped by PyTorch to :math:`[\epsilon, 1-\epsilon]` before the logit is taken.
    """

    @property
    def _eta(self):
        return self.logits

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        eta, value = torch.broadcast_tensors(self._eta, value)
        return eta * value - cb_log_normalizer(eta)

    @property
    def mean(self):
        return cb_mean(self._eta)

    @property
    def variance(self):
        return cb_variance(self._eta)

    def entropy(self):
        eta = self._eta
        return cb_log_normalizer(eta) - eta * cb_mean(eta)

    def cdf(self, value):
        r""":math:`F(x) = \frac{e^{\eta x} - 1}{e^\eta - 1}`, written for :math:`\eta > 0` through :math:`F(x; \eta) = 1 - F(1 - x; -\eta)`."""
        if self._validate_args:
            self._validate_sample(value)
        eta, value = torch.broadcast_tensors(self._eta, value)
        zero = eta == 0
        n = -_safe(eta, zero).abs()  # the negative of |eta|: expm1 of it cannot overflow
        pos = eta > 0
        y = torch.where(pos, 1 - value, value)
        f = torch.expm1(n * y) / torch.expm1(n)
        f = torch.where(pos, 1 - f, f)
        return torch.where(zero, value, f).clamp(0, 1)

    def icdf(self, value):
        r""":math:`F^{-1}(u) = \log(1 + u\,(e^\eta - 1)) / \eta`, through the same symmetry for :math:`\eta > 0`."""
        eta = self._eta
        eta, value = torch.broadcast_tensors(eta, value)
        zero = eta == 0
        n = -_safe(eta, zero).abs()
        pos = eta > 0
        u = torch.where(pos, 1 - value, value)
        x = torch.log1p(u * torch.expm1(n)) / n
        x = torch.where(pos, 1 - x, x)
        return torch.where(zero, value, x).clamp(0, 1)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        return self.icdf(u)


# Discretized logistic ----------------------------------------------------------------------------


class DiscretizedLogistic(TorchDistribution):
    r"""A logistic density discretized onto the levels :math:`v_k = k/(L-1)`, :math:`k = 0, \dots, L-1`.

    With :math:`\delta = 1/(2(L-1))`, :math:`a_k = (v_k - \delta - \mu)/s`, :math:`b_k = (v_k + \delta - \mu)/s`:

    .. math::

        P(k) = \begin{cases}
            \sigma(b_0) & k = 0 \\
            \sigma(b_k) - \sigma(a_k) = \sigma(b_k)\,\sigma(-a_k)\,(1 - e^{a_k - b_k}) & 0 < k < L-1 \\
            1 - \sigma(a_{L-1}) = \sigma(-a_{L-1}) & k = L-1
        \end{cases}

    The middle form is evaluated in log space as
    :math:`\log\sigma(b) + \log\sigma(-a) + \log(-\mathrm{expm1}(a - b))`, exact for any scale
    (PixelCNN++ switches to a midpoint density approximation instead when the bin mass is tiny).

    Values are the data levels themselves (``k / (L-1)``, as the data sets store 8-bit pixels);
    a value is mapped to the nearest level.

    :param loc: :math:`\mu`, on the scale of the data (levels in [0, 1]).
    :param scale: :math:`s > 0`.
    :param int levels: :math:`L \ge 2`.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval

    def __init__(self, loc, scale, levels=256, *, validate_args=None):
        if int(levels) < 2:
            raise ValueError(f"a discretized distribution needs at least 2 levels, got {levels}")
        self.levels = int(levels)
        self.loc, self.scale = torch.broadcast_tensors(torch.as_tensor(loc), torch.as_tensor(scale))
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.levels = self.levels
        new.loc = self.loc.expand(batch_shape)
        new.scale = self.scale.expand(batch_shape)
        super(DiscretizedLogistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def level_index(self, value):
        """The level :math:`k` nearest to each value, as a float tensor."""
        return torch.round(value * (self.levels - 1)).clamp(0, self.levels - 1)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        top = self.levels - 1
        k = self.level_index(value)
        half = 0.5 / top
        centered = k / top - self.loc
        upper = (centered + half) / self.scale  # b_k
        lower = (centered - half) / self.scale  # a_k
        log_cdf_upper = F.logsigmoid(upper)
        log_sf_lower = F.logsigmoid(-lower)
        middle = log_cdf_upper + log_sf_lower + torch.log(-torch.expm1(lower - upper))
        return torch.where(k == 0, log_cdf_upper, torch.where(k == top, log_sf_lower, middle))

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            tiny = torch.finfo(u.dtype).tiny
            y = self.loc + self.scale * (torch.log(u + tiny) - torch.log1p(-u))
            return self.level_index(y) / (self.levels - 1)

    @property
    def mean(self):
        r""":math:`\mathbb{E}[v] = \frac{1}{L-1}\sum_{j=1}^{L-1} P(k \ge j) = \frac{1}{L-1}\sum_{j=1}^{L-1} \sigma\!\left(\frac{\mu - (j - \frac12)/(L-1)}{s}\right)`."""
        top = self.levels - 1
        total = torch.zeros_like(self.loc)
        for j in range(1, top + 1):
            total = total + torch.sigmoid((self.loc - (j - 0.5) / top) / self.scale)
        return total / top


# Discretized mixture of logistics ----------------------------------------------------------------


class DiscretizedLogisticMixture(TorchDistribution):
    r"""A mixture of :math:`K` discretized logistics per data dimension, on the levels :math:`v_k = k/(L-1)`.

    PixelCNN++ (Salimans et al. 2017, eq. 2):

    .. math::

        P(k) = \sum_{i=1}^{K} \pi_i \, P_{\mathrm{DL}}(k \mid \mu_i, s_i), \qquad
        \pi = \mathrm{softmax}(\text{logits}),

    where :math:`P_{\mathrm{DL}}` is :class:`DiscretizedLogistic`: the mass of the bin
    :math:`[v_k - \delta, v_k + \delta]`, :math:`\delta = 1/(2(L-1))`, with the edge bins extended
    to :math:`\mp\infty`, evaluated in log space (exact for any scale). The mixture is a log-sum-exp
    over the components of :math:`\log\pi_i + \log P_{\mathrm{DL}}(k \mid \mu_i, s_i)`, so it sums to
    one over the :math:`L` levels for every parameter value.

    **Channels.** Every data dimension (each channel of each pixel) has its own :math:`K` weights,
    locations and scales, and the dimensions are independent given the parameters. PixelCNN++
    instead shares one set of mixture weights across the three channels of a pixel and makes the
    green and blue means depend linearly on the red and green values (its autoregressive
    coefficients); that ties the likelihood to RGB data and to a fixed channel order, so it is not
    done here: a VAE decoder's output already correlates the channels through :math:`z`.

    Shapes: ``logits``, ``loc`` and ``scale`` have shape ``(..., K)`` (broadcastable), the component
    index last; the batch shape is ``(...)``, the data shape; no event dims. Values are the levels
    themselves, ``k / (L-1)`` in [0, 1] (a value is mapped to the nearest level), as for
    :class:`DiscretizedLogistic`.

    :param logits: unnormalized log mixture weights, ``(..., K)``.
    :param loc: :math:`\mu_i` on the scale of the data (levels in [0, 1]), ``(..., K)``.
    :param scale: :math:`s_i > 0`, ``(..., K)``.
    :param int num_levels: :math:`L \ge 2` (256 for 8-bit pixels).
    :raises ValueError: for fewer than 2 levels or parameters with no component dimension.
    """

    arg_constraints = {"logits": constraints.real, "loc": constraints.real, "scale": constraints.positive}
    support = constraints.unit_interval

    def __init__(self, logits, loc, scale, num_levels=256, *, validate_args=None):
        if int(num_levels) < 2:
            raise ValueError(f"a discretized distribution needs at least 2 levels, got {num_levels}")
        self.levels = int(num_levels)
        logits, loc, scale = (torch.as_tensor(t) for t in (logits, loc, scale))
        if min(logits.dim(), loc.dim(), scale.dim()) < 1:
            raise ValueError("logits, loc and scale need a last dimension indexing the mixture components")
        self.logits, self.loc, self.scale = torch.broadcast_tensors(logits, loc, scale)
        super().__init__(self.loc.shape[:-1], validate_args=validate_args)

    @property
    def num_levels(self):
        return self.levels

    @property
    def num_components(self):
        return self.loc.shape[-1]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogisticMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + (self.num_components,)
        new.levels = self.levels
        new.logits = self.logits.expand(shape)
        new.loc = self.loc.expand(shape)
        new.scale = self.scale.expand(shape)
        super(DiscretizedLogisticMixture, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _components(self):
        return DiscretizedLogistic(self.loc, self.scale, self.levels, validate_args=False)

    def level_index(self, value):
        """The level :math:`k` nearest to each value, as a float tensor."""
        return torch.round(value * (self.levels - 1)).clamp(0, self.levels - 1)

    def log_prob(self, value):
        """:math:`\\log P(k)`, shape ``broadcast(value.shape, batch_shape)``."""
        if self._validate_args:
            self._validate_sample(value)
        component_log_p = self._components().log_prob(value.unsqueeze(-1))  # (..., K)
        return (torch.log_softmax(self.logits, dim=-1) + component_log_p).logsumexp(-1)

    def sample(self, sample_shape=torch.Size()):
        """Levels ``k/(L-1)``: a component drawn by its weight, then a discretized logistic draw from it."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            logits = self.logits.expand(shape + (self.num_components,))
            i = torch.distributions.Categorical(logits=logits).sample().unsqueeze(-1)
            loc = self.loc.expand(logits.shape).gather(-1, i).squeeze(-1)
            scale = self.scale.expand(logits.shape).gather(-1, i).squeeze(-1)
            u = torch.rand(shape, dtype=loc.dtype, device=loc.device)
            tiny = torch.finfo(u.dtype).tiny
            y = loc + scale * (torch.log(u + tiny) - torch.log1p(-u))
            return self.level_index(y) / (self.levels - 1)

    @property
    def mean(self):
        r""":math:`\mathbb{E}[v] = \sum_i \pi_i\,\mathbb{E}_{\mathrm{DL}}[v \mid \mu_i, s_i]` (see :attr:`DiscretizedLogistic.mean`)."""
        return (torch.softmax(self.logits, dim=-1) * self._components().mean).sum(-1)
