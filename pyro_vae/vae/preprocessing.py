r"""Preparing data for a likelihood family: support checks, binarization, dequantization.

A family :math:`p_\theta(x \mid z)` names the :class:`Preparation` its data needs
(:meth:`pyro_vae.vae.likelihoods.Likelihood.preparation`); the preparation checks a data set against
the family's support once, applies a deterministic transform once (:meth:`Preparation.static`) and a
random one afresh each time a batch is used (:meth:`Preparation.batch`; with a fixed
:class:`torch.Generator` for a test set, so that test numbers compare across epochs and runs).

Images are stored as levels :math:`v = k / (L - 1)`, :math:`k \in \{0, \dots, L-1\}`
(:attr:`pyro_vae.data.dataset.Dataset.levels`). The preparations:

- :class:`Binarize`: a Bernoulli pmf needs 0/1 data: dynamic binarization
  :math:`x_d \sim \mathrm{Bernoulli}(v_d)` per use (Burda et al. 2015), a threshold
  :math:`[v_d > 0.5]` once, or none (the data must be binary);
- :class:`Dequantize`: a density on quantized data is trained and scored on
  :math:`y = (k + u) / L`, :math:`u \sim \mathcal{U}[0, 1)^D` (Uria et al. 2013; Theis et al. 2016),
  optionally clamped into the open interval :math:`[\epsilon, 1 - \epsilon]` (for a density
  infinite at 0 and 1); on continuous data (no levels) the values are used as given;
- :class:`Levels`: a pmf on the levels themselves (discretized logistic) uses the data as is.
"""

import torch

from ..errors import UserError

#: Data domains a family may declare, with what they mean, for error messages and docs.
DOMAINS = {
    "binary": "values in {0, 1}",
    "unit": "values in the interval [0, 1]",
    "open-unit": "values in the open interval (0, 1)",
    "real": "real values",
    "levels": "the L levels k/(L-1) of quantized data (e.g. 8-bit pixels)",
}


def is_binary(x):
    """True when every value of ``x`` is 0 or 1."""
    return bool(((x == 0) | (x == 1)).all())


def check_finite(x, what):
    """:class:`UserError` when ``x`` holds NaN or infinite values."""
    if not torch.isfinite(x).all():
        raise UserError(f"{what} contains NaN or infinite values")


def check_unit(x, what, family):
    """:class:`UserError` when ``x`` has values outside [0, 1], which the ``family`` needs."""
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise UserError(
            f"{what} has values in [{x.min().item():.4g}, {x.max().item():.4g}], but the {family} likelihood "
            "needs values in [0, 1]; rescale the data or choose a family for real values (e.g. gaussian)"
        )


def check_levels(x, levels, what):
    """The data must sit on the grid ``k/(levels-1)`` that its data set declares (:class:`UserError` otherwise)."""
    check_unit(x, what, f"{levels}-level")
    scaled = x * (levels - 1)
    if x.numel() and (scaled - scaled.round()).abs().max() > 1e-3:
        raise UserError(f"{what} is declared to have {levels} levels k/{levels - 1} but has values between them")


def dequantize(x, levels, generator=None):
    r"""Uniform dequantization of levels :math:`x = k/(L-1)`: :math:`y = (k + u)/L`, :math:`u \sim \mathcal{U}[0, 1)`.

    ``y`` lies in :math:`[k/L, (k+1)/L)`: the :math:`L` bins tile :math:`[0, 1)`, each of width :math:`1/L`.
    Same shape, dtype and device as ``x``.
    """
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (k + u) / levels


class Preparation:
    """How a data set is checked and transformed for one family.

    :param str family: the family's name, for messages.
    :param int levels: the data's number of levels ``L``, or ``None`` for continuous data.
    """

    def __init__(self, family, levels=None):
        self.family, self.levels = family, levels

    def check(self, x, what="data"):
        """Refuse data outside the family's support with a :class:`UserError` naming ``what``."""
        check_finite(x, what)

    def static(self, x):
        """A deterministic transform applied once to a whole data set (default: none)."""
        return x

    def batch(self, x, generator=None):
        """A random transform applied afresh each time a batch is used (default: none).

        ``generator`` (a :class:`torch.Generator`) fixes the draw, as for a test set.
        """
        return x


class Binarize(Preparation):
    """0/1 data for a Bernoulli: ``dynamic`` (a fresh draw per use), ``threshold`` (> 0.5, once) or
    ``none`` (the data must already be binary)."""

    MODES = ("dynamic", "threshold", "none")

    def __init__(self, family, levels=None, mode="dynamic"):
        super().__init__(family, levels)
        if mode not in self.MODES:
            raise UserError(f"unknown binarization {mode!r}; choose one of: {', '.join(self.MODES)}")
        self.mode = mode

    def check(self, x, what="data"):
        super().check(x, what)
        check_unit(x, what, self.family)
        if self.mode == "none" and not is_binary(x):
            raise UserError(
                f"{what} is not binary but --binarize none was given: a Bernoulli scores only 0/1 values, "
                "so use --binarize dynamic or threshold, or a family for values in [0, 1]"
            )

    def static(self, x):
        return (x > 0.5).to(x.dtype) if self.mode == "threshold" else x

    def batch(self, x, generator=None):
        return torch.bernoulli(x, generator=generator) if self.mode == "dynamic" else x


class Dequantize(Preparation):
    """A density's data: on ``levels``-level data dequantized afresh per use (:func:`dequantize`);
    on continuous data as given, checked against ``domain``. ``clamp=eps`` then clamps into
    :math:`[\\epsilon, 1 - \\epsilon]`."""

    def __init__(self, family, levels=None, domain="real", clamp=None):
        super().__init__(family, levels)
        self.domain, self.clamp = domain, clamp

    def check(self, x, what="data"):
        super().check(x, what)
        if self.levels is not None:
            check_levels(x, self.levels, what)
        elif self.domain in ("unit", "open-unit"):
            check_unit(x, what, self.family)

    def batch(self, x, generator=None):
        y = dequantize(x, self.levels, generator) if self.levels is not None else x
        return y.clamp(self.clamp, 1 - self.clamp) if self.clamp is not None else y


class Levels(Preparation):
    """A pmf on the ``levels`` of quantized data: the data is used as is, and must be quantized."""

    def check(self, x, what="data"):
        super().check(x, what)
        if self.levels is None:
            raise UserError(
                f"the {self.family} likelihood needs quantized data (e.g. 8-bit pixels), but {what} "
                "declares no number of levels; use a density such as gaussian for continuous data"
            )
        check_levels(x, self.levels, what)
