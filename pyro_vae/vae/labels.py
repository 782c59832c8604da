r"""Labels as random variables: the conditional VAE and the semi-supervised VAE "M2".

Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised learning with deep generative models",
make the class label :math:`y \in \{0, \dots, C-1\}` of an item a variable of the model.

**Conditional VAE** (:class:`ConditionalVAE`, ``pyro-vae fit --conditional``): the label is always
observed and enters both nets,

.. math::

    z_i \sim p(z), \qquad x_i \sim p_\theta(x \mid z_i, y_i), \qquad
    q_\phi(z \mid x_i, y_i),

trained on the conditional ELBO
:math:`\mathcal{L}(x, y) = \mathbb{E}_{q_\phi(z \mid x, y)}[\log p_\theta(x \mid z, y) + \log p(z) - \log q_\phi(z \mid x, y)]
\le \log p_\theta(x \mid y)`.

**Semi-supervised VAE, M2** (:class:`SemiSupervisedVAE`, ``pyro-vae fit --semi-supervised``): the
label is a latent variable with a prior, observed on the few labelled items,

.. math::

    y_i \sim \mathrm{Cat}(\pi), \qquad z_i \sim p(z), \qquad x_i \sim p_\theta(x \mid y_i, z_i),

with the guide :math:`q_\phi(y \mid x)\, q_\phi(z \mid x, y)` (a classifier and the conditional
encoder). For a labelled item the bound is the paper's eq. 6, the conditional ELBO plus the prior
of the label, :math:`\mathcal{L}(x, y) + \log p(y)`; for an unlabelled one (eq. 7) :math:`y` is
summed out exactly against the classifier,

.. math::

    \mathcal{U}(x) = \sum_y q_\phi(y \mid x) \big(\mathcal{L}(x, y) + \log p(y) - \log q_\phi(y \mid x)\big) \le \log p_\theta(x).

Pyro computes that sum itself: the guide's site ``"y"`` is marked for parallel enumeration
(:func:`pyro.infer.config_enumerate`) and :class:`pyro.infer.TraceEnum_ELBO` runs the model and
guide once with a tensor of all :math:`C` values of :math:`y` along a new batch dimension (shape
``(C, 1)``, broadcasting against the ``(B,)`` items), weighting each by :math:`q_\phi(y \mid x)`.
No :math:`y` is sampled, so the bound has no variance from :math:`y`, and its gradient with respect to
the classifier is exact: a score-function estimator for a sampled :math:`y` would be far noisier.

The classifier would learn from unlabelled items only through :math:`\mathcal{U}`; eq. 9 adds a
classification loss on the labelled items, :math:`\mathcal{J}^\alpha = \sum_{(x,y)} -[\mathcal{L}(x,y) + \log p(y)]
+ \sum_x -\mathcal{U}(x) + \alpha \sum_{(x,y)} -\log q_\phi(y \mid x)`. In :meth:`SemiSupervisedVAE.training_model`
it is one ``pyro.factor`` of :math:`\alpha \log q_\phi(y \mid x)` in the model, so one Pyro loss
trains everything with one optimizer.

**The label in the nets.** The label enters as a one-hot vector of size :math:`C`:

- the decoder takes the code :math:`(z, \mathrm{onehot}(y))`, size ``z_dim + C`` (any ``--arch``: its
  decoder is built for that code size);
- the guide :math:`q_\phi(z \mid x, y)` is a guide of the usual contract (:class:`~pyro_vae.vae.guides.Guide`)
  built for *packed inputs*: ``x_dim = D + C``, and it is called with the flattened item followed
  by the one-hot label, ``(..., D + C)``. Any guide, built in or a user's ``file.py:Name``, thus
  becomes conditional unchanged. With an image architecture (``--arch conv``) the guide is given the
  body :class:`LabelledBody`, which unpacks the vector, runs the image body on the item and returns its
  features followed by the label. Under enumeration the packed input has a leading class dimension,
  ``(C, B, D + C)``: the built-in guides broadcast over leading dimensions; a user's guide must too.
- the classifier :math:`q_\phi(y \mid x)` (:class:`Classifier`) is the architecture's encoder body
  (the MLP ``D -> hidden`` for ``mlp``) with a linear head to :math:`C` logits.

Everything here is model code: no I/O. Training (mixing labelled and unlabelled minibatches) is
in :mod:`pyro_vae.train.labelled`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import pyro
import pyro.distributions as dist
from pyro.infer import TraceEnum_ELBO, config_enumerate

from ..errors import UserError
from .model import VAE
from .nets import ACTIVATIONS, MLP, build_architecture, parse_hidden

__all__ = [
    "Classifier", "ConditionalVAE", "LabelledBody", "LabelledVAE", "SemiSupervisedVAE", "check_labels",
    "class_scores", "conditional_log_weights", "enumerated_elbo", "one_hot",
]  # fmt: skip


def one_hot(y, num_classes, like):
    """Integer labels ``(...)`` -> one-hot ``(..., num_classes)`` in ``like``'s dtype and device."""
    return F.one_hot(y.long(), num_classes).to(dtype=like.dtype, device=like.device)


def _cat(a, b):
    """``a (..., m)`` and ``b (..., n)`` with broadcast leading dimensions -> ``(..., m + n)``."""
    lead = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*lead, a.shape[-1]), b.expand(*lead, b.shape[-1])], dim=-1)


def check_labels(labels, num_classes, n=None, what="the labels"):
    """``labels`` as a long tensor of class indices in ``0 .. num_classes - 1``.

    :raises UserError: for labels that are not whole numbers, out of range, or not ``n`` of them.
    """
    if labels is None:
        raise UserError(f"{what} are missing: this model needs a label for every item")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or (n is not None and len(labels) != n):
        raise UserError(f"{what} must be one label per item, shape ({n if n is not None else 'N'},); "
                        f"got shape {tuple(labels.shape)}")  # fmt: skip
    if labels.is_floating_point():
        if not torch.isfinite(labels).all() or not torch.equal(labels, labels.round()):
            raise UserError(f"{what} must be whole numbers (class indices 0..{num_classes - 1})")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{what} must be class indices 0..{num_classes - 1}; got values from "
                        f"{labels.min().item():g} to {labels.max().item():g}")  # fmt: skip
    return labels.long()


class LabelledBody(nn.Module):
    """The architecture's encoder body for packed inputs ``(..., D + C)``: the item (reshaped to
    ``x_shape``) through ``body``, its ``body.out_dim`` features followed by the ``C`` label values.

    :ivar int out_dim: ``body.out_dim + C``.
    """

    def __init__(self, body, x_shape, num_classes):
        super().__init__()
        self.body, self.x_shape, self.num_classes = body, tuple(x_shape), int(num_classes)
        self.out_dim = body.out_dim + self.num_classes

    def forward(self, packed):
        lead, d = packed.shape[:-1], math.prod(self.x_shape)
        x = packed[..., :d].reshape(-1, *self.x_shape)
        h = self.body(x).reshape(*lead, self.body.out_dim)
        return torch.cat([h, packed[..., d:]], dim=-1)


class Classifier(nn.Module):
    r""":math:`q_\phi(y \mid x)`: items ``(B, *x_shape)`` (or flattened) -> ``(B, C)`` logits.

    ``body`` (the architecture's encoder body, taking items in their shape) with a linear head, or
    without one the MLP ``D -> hidden -> C`` on flattened items.
    """

    def __init__(self, x_shape, num_classes, hidden, activation, body=None):
        super().__init__()
        self.x_shape = tuple(x_shape)
        d = math.prod(self.x_shape)
        if body is None:
            self.net, self.flatten = MLP(d, parse_hidden(hidden), num_classes, activation), True
        else:
            self.net, self.flatten = nn.Sequential(body, nn.Linear(body.out_dim, num_classes)), False

    def forward(self, x):
        k = len(self.x_shape)
        if self.flatten and x.dim() > k and tuple(x.shape[-k:]) == self.x_shape:
            x = x.flatten(-k)
        elif not self.flatten and tuple(x.shape[1:]) != self.x_shape:
            x = x.reshape(len(x), *self.x_shape)
        return self.net(x)


class LabelledVAE(VAE):
    """A :class:`~pyro_vae.vae.model.VAE` whose decoder takes ``(z, onehot(y))`` and whose guide takes
    ``(x, onehot(y))`` packed (see the module's docstring). The arguments are :class:`VAE`'s, after
    ``num_classes`` :math:`C`.

    :raises UserError: for fewer than 2 classes.
    """

    def __init__(self, x_dim, num_classes, *args, **kwargs):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise UserError(f"a model with labels needs at least 2 classes, got {num_classes!r}")
        self._classes = int(num_classes)
        super().__init__(x_dim, *args, **kwargs)

    @property
    def num_classes(self):
        return self._classes

    @property
    def label_dim(self):
        return self._classes

    def guide_input(self, body):
        d = math.prod(self.x_shape)
        return (d + self.num_classes,), None if body is None else LabelledBody(body, self.x_shape, self.num_classes)

    @property
    def encoder_input_shape(self):
        return (self.x_dim + self.num_classes,)

    def pack(self, x, y):
        """The guide's input: flattened items ``(B, D)`` followed by ``onehot(y)``; ``y`` integer labels
        ``(B,)`` or, enumerated, ``(C, 1)``: the result is then ``(C, B, D + C)``."""
        x = self.flat(x)
        return _cat(x, one_hot(y, self.num_classes, x))

    def code(self, z, y):
        """The decoder's input ``(z, onehot(y))`` (leading dimensions broadcast)."""
        return _cat(z, one_hot(y, self.num_classes, z))

    def _check_y(self, x, y):
        if y is None or y.shape != x.shape[:1]:
            raise ValueError(f"labels of shape ({x.shape[0]},) are needed, got {None if y is None else tuple(y.shape)}")

    # Uses of a trained model ------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z, y=None):
        """:math:`\\mathbb{E}[x \\mid z, y]` for codes ``z (..., z_dim)`` and labels ``y`` (broadcast against
        ``z``'s leading dimensions; default the label of each row ``i`` is ``i mod C``)."""
        if y is None:
            y = torch.arange(z.shape[-2] if z.dim() > 1 else 1, device=z.device) % self.num_classes
        return self.likelihood.mean(self.decoder(self.code(z, y)))

    @torch.no_grad()
    def sample(self, n, generator=None, label=None):
        """Decoder means for ``n`` codes from the prior, ``(n, D)``, with the class ``label`` (default: the
        classes in turn, ``i mod C``).

        :raises UserError: for a label outside ``0 .. C - 1``.
        """
        p = next(self.parameters())
        z = torch.randn(n, self.z_dim, generator=generator, device=p.device, dtype=p.dtype)
        if label is None:
            y = torch.arange(n, device=p.device) % self.num_classes
        else:
            y = check_labels(torch.full((n,), label), self.num_classes, what="--label").to(p.device)
        return self.decode(z, y)

    @torch.no_grad()
    def class_grid(self, columns=8, generator=None):
        """The paper's Figure 1: ``C`` rows (one per class) of ``columns`` samples, the same code ``z`` down
        each column (style kept, class changed). Returns ``(C * columns, D)`` decoder means, row by row."""
        p = next(self.parameters())
        z = torch.randn(1, columns, self.z_dim, generator=generator, device=p.device, dtype=p.dtype)
        y = torch.arange(self.num_classes, device=p.device)[:, None]  # (C, 1) against (1, columns)
        return self.decode(z, y).reshape(self.num_classes * columns, -1)

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        """Decoder means for one draw :math:`z \\sim q_\\phi(z \\mid x, y)` per row of ``x``, decoded with the same
        label (for the semi-supervised model ``y`` defaults to the classifier's most probable class)."""
        if y is None:
            y = self.predict(x)
        return self.decode(self.encoder(self.pack(x, y)).sample(), y)

    def predict(self, x):
        raise UserError("the conditional model needs the items' labels (it has no classifier)")


class ConditionalVAE(LabelledVAE):
    """The conditional VAE: :math:`p(z)\\, p_\\theta(x \\mid z, y)` and :math:`q_\\phi(z \\mid x, y)`, ``y`` always given."""

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:  # type: ignore[override]  # labelled models take the labels y beside x: not VAE.model's signature
        """:math:`p(z)\\,p_\\theta(x \\mid z, y)` for items ``x (B, ...)`` and their labels ``y (B,)``."""
        self._check_y(x, y)
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood.distribution(self.decoder(self.code(z, y))).to_event(1), obs=self.flat(x))

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:  # type: ignore[override]  # labelled models take the labels y beside x: not VAE.model's signature
        """:math:`q_\\phi(z \\mid x, y)`."""
        self._check_y(x, y)
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.encoder(self.pack(x, y)))


class SemiSupervisedVAE(LabelledVAE):
    """M2 of Kingma et al. (2014): :math:`p(y)\\,p(z)\\,p_\\theta(x \\mid y, z)` with the guide
    :math:`q_\\phi(y \\mid x)\\,q_\\phi(z \\mid x, y)`. ``p(y)`` is uniform, :math:`\\pi_c = 1/C`.

    :param float alpha: the weight :math:`\\alpha` of the classification loss on labelled items (eq. 9),
        used by :meth:`training_model`.

    Other arguments: :class:`LabelledVAE`'s; ``arch``, ``hidden``, ``activation``, ``channels`` also build
    the :class:`Classifier`.
    """

    #: the logits of the uniform :math:`p(y)` (a buffer)
    prior_logits: torch.Tensor

    def __init__(self, x_dim: int | Sequence[int], num_classes: int, z_dim: int = 20,
                 hidden: int | str | Sequence[int] = (400,), activation: str = "relu", *args: Any, alpha: float = 1.0,
                 arch: Any = "mlp", channels: int | str | Sequence[int] = (32, 64, 128, 256),
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(x_dim, num_classes, z_dim, hidden, activation, *args, arch=arch, channels=channels, **kwargs)
        if activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        body = build_architecture(arch, hidden, activation, channels).encoder(self.x_shape)
        #: :math:`q_\phi(y \mid x)`, the classifier: items -> ``C`` logits
        self.classifier = Classifier(self.x_shape, num_classes, hidden, activation, body)
        self.alpha = float(alpha)
        self.register_buffer("prior_logits", torch.zeros(num_classes), persistent=False)

    def label_prior(self, like: torch.Tensor | None = None) -> dist.Categorical:
        """:math:`p(y) = \\mathrm{Cat}(\\pi)`, :math:`\\pi_c = 1/C`."""
        return dist.Categorical(logits=self.prior_logits)

    def label_posterior(self, x: torch.Tensor) -> dist.Categorical:
        """:math:`q_\\phi(y \\mid x)` for items ``x (B, ...)``: a Categorical of batch shape ``(B,)``."""
        return dist.Categorical(logits=self.classifier(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's most probable class of each item, ``(B,)``."""
        return self.classifier(x).argmax(-1)

    # the model and guide, with the names of their plate and sites as arguments so that one trace can
    # hold an unlabelled and a labelled minibatch (training_model)
    def _generate(self, x, y, plate, tag, classify=False):
        with pyro.plate(plate, x.shape[0]):
            if classify:  # eq. 9's alpha * log q(y | x) of the observed labels
                pyro.factor("classification" + tag, self.alpha * self.label_posterior(x).log_prob(y))
            y = pyro.sample("y" + tag, self.label_prior(x), obs=y)
            z = pyro.sample("z" + tag, self.prior(x))
            decoded = self.likelihood.distribution(self.decoder(self.code(z, y))).to_event(1)
            pyro.sample("x" + tag, decoded, obs=self.flat(x))

    def _infer(self, x, y, plate, tag):
        with pyro.plate(plate, x.shape[0]):
            if y is None:  # enumerated under TraceEnum_ELBO with config_enumerate, else sampled
                y = pyro.sample("y" + tag, self.label_posterior(x))
            pyro.sample("z" + tag, self.encoder(self.pack(x, y)))

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """:math:`p(y)\\,p(z)\\,p_\\theta(x \\mid y, z)`; ``y (B,)`` observed when given."""
        pyro.module("decoder", self.decoder)
        self._generate(x, y, "data", "")

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """:math:`q_\\phi(y \\mid x)\\,q_\\phi(z \\mid x, y)`; without ``y`` the site ``"y"`` is drawn from the
        classifier (enumerated when the guide is wrapped in :func:`~pyro.infer.config_enumerate`)."""
        pyro.module("encoder", self.encoder)
        pyro.module("classifier", self.classifier)
        self._infer(x, y, "data", "")

    # The training objective of eq. 9: one unlabelled and one labelled minibatch per step --------
    def training_model(self, x_u: torch.Tensor | None, x_l: torch.Tensor | None, y_l: torch.Tensor | None) -> None:
        """The model of one training step: the unlabelled minibatch ``x_u`` (plate ``"unlabelled"``, its
        ``y`` latent), the labelled ``(x_l, y_l)`` (plate ``"labelled"``, ``y`` observed) and the
        classification term :math:`\\alpha \\log q_\\phi(y \\mid x)` of each labelled item as a ``pyro.factor``.
        Either minibatch may be ``None`` (absent)."""
        pyro.module("decoder", self.decoder)
        if x_u is not None:
            self._generate(x_u, None, "unlabelled", "_u")
        if x_l is not None:
            pyro.module("classifier", self.classifier)
            self._generate(x_l, y_l, "labelled", "_l", classify=True)

    def training_guide(self, x_u: torch.Tensor | None, x_l: torch.Tensor | None, y_l: torch.Tensor | None) -> None:
        """The guide of :meth:`training_model`; its unlabelled ``y`` is marked for parallel enumeration."""
        pyro.module("encoder", self.encoder)
        pyro.module("classifier", self.classifier)
        if x_u is not None:
            config_enumerate(self._infer, default="parallel")(x_u, None, "unlabelled", "_u")
        if x_l is not None:
            self._infer(x_l, y_l, "labelled", "_l")


def enumerated_elbo(particles=1):
    """The loss of :meth:`SemiSupervisedVAE.training_model`: :class:`~pyro.infer.TraceEnum_ELBO` with one plate
    dimension (the items), so that the enumerated ``y`` takes the dimension left of it; ``particles`` draws of
    ``z`` per item and class, vectorized. A step with a labelled minibatch only has nothing to enumerate, which is
    expected here (no warning)."""
    return TraceEnum_ELBO(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1,
                          strict_enumeration_warning=False)  # fmt: skip


# Test-time scores -----------------------------------------------------------------------------------

#: upper bound on particles x items x data dimensions held in memory at once
MAX_ELEMENTS = 2**23


@torch.no_grad()
def conditional_log_weights(vae, x, y, num_samples):
    r"""``(num_samples, B)`` log importance weights :math:`\log p_\theta(x \mid z_k, y) + \log p(z_k) - \log q_\phi(z_k \mid x, y)`,
    :math:`z_k \sim q_\phi(z \mid x, y)`, for items ``x (B, ...)`` with labels ``y (B,)``: their mean
    is the conditional ELBO's estimate, their log-mean-exp the importance-sampled :math:`\log p_\theta(x \mid y)`."""
    q = vae.encoder(vae.pack(x, y))
    z = q.sample((num_samples,))
    decoded = vae.likelihood.distribution(vae.decoder(vae.code(z, y))).to_event(1)
    return decoded.log_prob(vae.flat(x)) + vae.prior(x).log_prob(z) - q.log_prob(z)


@torch.no_grad()
def class_scores(vae, x, y=None, num_samples=1000):
    r"""Per-item test scores of a model with labels, from ``num_samples`` draws of :math:`z` per item and label.

    - A :class:`ConditionalVAE` (``y`` required): ``elbo`` (the conditional ELBO) and ``log_px``, the
      importance-sampled :math:`\log p_\theta(x \mid y)`.
    - A :class:`SemiSupervisedVAE`: :math:`y` summed out exactly over the ``C`` classes:
      ``log_px`` :math:`= \log \sum_y p(y)\, \hat p_\theta(x \mid y)` with :math:`\hat p_\theta(x \mid y)` the
      importance-sampled estimate (proposal :math:`q_\phi(z \mid x, y)`), ``elbo`` :math:`= \mathcal{U}(x)` of
      the module's docstring (the ELBO of each class weighted by :math:`q_\phi(y \mid x)`), ``predicted``
      (the classifier's class) and, with ``y``, ``correct`` (0/1 per item).

    :returns: dict of ``(N,)`` tensors.
    """
    with vae.fixed_prior():
        return _class_scores(vae, x, y, num_samples)


def _class_scores(vae, x, y, num_samples):
    n, d = x.shape[0], math.prod(x.shape[1:])
    classes = vae.num_classes if isinstance(vae, SemiSupervisedVAE) else 1
    items = max(1, MAX_ELEMENTS // (num_samples * classes * max(d, 1)))
    out = {"elbo": [], "log_px": []}
    if isinstance(vae, SemiSupervisedVAE):
        out["predicted"] = []
    for start in range(0, n, items):
        xb = x[start : start + items]
        if not isinstance(vae, SemiSupervisedVAE):
            log_w = conditional_log_weights(vae, xb, y[start : start + items], num_samples)
            out["elbo"].append(log_w.mean(0))
            out["log_px"].append(log_w.logsumexp(0) - math.log(num_samples))
            continue
        log_py = vae.label_prior().log_prob(torch.arange(classes, device=x.device))  # (C,)
        log_qy = vae.label_posterior(xb).logits  # (B, C), normalized log-probabilities
        elbos, log_pxy = [], []
        for c in range(classes):
            log_w = conditional_log_weights(vae, xb, torch.full((len(xb),), c, device=x.device), num_samples)
            elbos.append(log_w.mean(0))
            log_pxy.append(log_w.logsumexp(0) - math.log(num_samples))
        elbos, log_pxy = torch.stack(elbos, -1), torch.stack(log_pxy, -1)  # (B, C)
        out["elbo"].append((log_qy.exp() * (elbos + log_py - log_qy)).sum(-1))
        out["log_px"].append((log_pxy + log_py).logsumexp(-1))
        out["predicted"].append(log_qy.argmax(-1))
    result = {k: torch.cat(v) for k, v in out.items()}
    if "predicted" in result and y is not None:
        result["correct"] = (result["predicted"] == y.to(result["predicted"].device)).to(x.dtype)
    return result
