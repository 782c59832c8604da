r"""Use a trained VAE's latent space: encode data, interpolate, traverse units, scatter the codes.

Every function takes a :class:`~pyro_vae.vae.model.VAE` and data already prepared as the model expects
(``(N, *item_shape)``: ``(N, D)`` for the ``mlp`` nets, ``(N, C, H, W)`` for images with ``conv`` or
``resnet``; any batch that ``vae.encoder`` accepts as is), works in
batches on the VAE's device, and returns NumPy arrays on the CPU. Random draws are made under a
fixed ``seed`` inside :func:`pyro_vae.vae.guides.preserved_rng`: a call gives the same numbers for the
same ``seed`` (and ``batch_size``), and torch's global random state is left as it was.

**Posterior moments.** For each item the guide returns :math:`q_\phi(z \mid x)`. Its per-unit mean
:math:`m_j(x) = \mathbb{E}_q[z_j]` and variance :math:`v_j(x) = \mathrm{Var}_q[z_j]` are read from
the distribution when it has them in closed form (``diagonal``: :math:`\mu, \sigma^2`;
``full-rank``: :math:`\mu` and the diagonal of :math:`LL^\top`), and are otherwise Monte Carlo
estimates from ``samples`` draws (``iaf``, ``planar`` and other flows: the sample mean and the
unbiased sample variance; the mean's own standard error is :math:`\sqrt{v_j / K}`).

**Unit ordering** (:func:`unit_kl`, :func:`traverse`). Units are ordered by their average over
the data of :math:`\mathrm{KL}(q(z_j \mid x) \,\|\, p(z_j))`, :math:`p(z_j) = \mathcal{N}(0, 1)`,
computed as

.. math::

    \mathrm{KL}\big(\mathcal{N}(m_j, v_j) \,\|\, \mathcal{N}(0, 1)\big) = \tfrac12 \left(m_j^2 + v_j - 1 - \log v_j\right)

(Kingma & Welling 2013, Appendix B, one unit). This is exact when the marginal
:math:`q(z_j \mid x)` is Gaussian (``diagonal``, ``full-rank``). For a flow guide, :math:`m_j, v_j`
are Monte Carlo moments and the value is a lower bound on the marginal KL: among densities with
a given mean and variance the Gaussian has the largest entropy, and
:math:`\mathrm{KL}(q_j \| p_j) = -H(q_j) + \tfrac12 \log 2\pi + \tfrac12 (m_j^2 + v_j)`.

**The command line** (:mod:`pyro_vae.cli`, through the methods of :class:`~pyro_vae.runs.run.Run`; each
command calls :func:`encode_run`, :func:`save_reconstructions`, :func:`interpolate_run`, :func:`traverse_run` or
:func:`latents_run` here, on the items of :func:`run_items`):

``pyro-vae encode RUN [--split train|val|test | --data FILE] [--labels FILE] [--use-classifier] [--what mean|scale|samples] [--samples K] -o z.npy|z.csv``
    :func:`encode` on the chosen split (default ``test``) or a user's array, then :func:`save_codes`:
    ``z.npy`` holds ``(N, z)`` (or ``(N, K, z)`` for ``--what samples``) and ``z.labels.npy`` the
    labels when the data has them; ``z.csv`` has the header ``z0,...,z{d-1}[,label]``.
``pyro-vae reconstruct RUN [--split ...] [-n 16] [--sample] -o FILE.png``
    test inputs above :func:`reconstruct` (decoder means at the posterior mean, or at one draw
    with ``--sample``), drawn with :func:`pyro_vae.runs.plots.save_image_rows`.
``pyro-vae interpolate RUN --items I J [--steps 10] [--slerp] [--label Y] [--split ...] -o FILE.png``
    :func:`interpolate` between items ``I`` and ``J`` of the split: one row of ``steps`` images.
``pyro-vae traverse RUN [--item I] [--units U ...] [--top N] [--range 3] [--steps 9] [--label Y] -o FILE.png``
    :func:`traverse`: one row per unit (ordered by KL over the split unless ``--units`` is
    given), labelled with the unit and its KL in nats.
``pyro-vae latents RUN [--split ...] [--labels FILE] [--method auto|pca|tsne] -o latents.png``
    :func:`encode` then :func:`latent_scatter`, coloured by label when the data has labels.

**Runs with labels** (``--conditional``, ``--semi-supervised``; :mod:`pyro_vae.vae.labels`): every tool uses the
guide :math:`q_\phi(z \mid x, y)` and the decoder :math:`\mathbb{E}[x \mid z, y]`, with the labels of
:func:`run_labels`: the items' own (the split's, the ``--data`` file's, or ``--labels FILE``), required by a
conditional run; a semi-supervised run without them (or with ``--use-classifier``) uses its classifier's most
probable class. ``encode`` saves the labels used; ``reconstruct`` decodes each item with its label;
``interpolate`` encodes each end with its label and decodes the path with one class (``--label``, default the
items' common label); ``traverse`` decodes with ``--label``, default ``--item``'s label, else every class (one
row per class for each unit); ``latents`` colours by the labels used.

Errors a user can cause raise :class:`~pyro_vae.errors.UserError`.
"""

import csv
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..data.files import label_column
from ..errors import UserError
from ..vae.guides import preserved_rng
from ..vae.labels import LabelledVAE, SemiSupervisedVAE, check_labels
from ..vae.priors import StandardPrior

#: draws per item for the Monte Carlo moments of a guide without closed-form mean or variance
MC_SAMPLES = 256

WHATS = ("mean", "scale", "samples")


# Helpers -------------------------------------------------------------------------------------------


def _param(vae):
    return next(vae.parameters())


@contextmanager
def seeded(device, seed):
    """Draws inside are a function of ``seed``; torch's global generators are restored afterwards."""
    device = torch.device(device)
    with preserved_rng(device):
        torch.random.default_generator.manual_seed(int(seed))
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(int(seed))
        yield


def _as_batch(vae, x):
    p = _param(vae)
    return torch.as_tensor(x, dtype=p.dtype, device=p.device)


def _check_data(x, what="x"):
    if not hasattr(x, "shape") or len(x.shape) < 1:
        raise UserError(f"{what} must be an array of shape (N, ...), got {type(x).__name__}")
    if x.shape[0] < 1:
        raise UserError(f"{what} has no items (shape {tuple(x.shape)})")


def _batches(n, batch_size):
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def _labelled(vae):
    return isinstance(vae, LabelledVAE)


def class_indices(labels, num_classes, n, what="the labels"):
    """``labels`` (``(n,)``, NumPy or torch) as class indices ``0 .. num_classes - 1`` (a long tensor).

    :raises UserError: labels that are not whole numbers (strings included), out of range, or not ``n`` of them.
    """
    if isinstance(labels, np.ndarray) and labels.dtype.kind not in "biuf":
        raise UserError(f"{what} must be class indices 0..{num_classes - 1}, got {labels.dtype} values")
    return check_labels(labels, num_classes, n, what)


@torch.no_grad()
def guide_labels(vae, x, labels=None, batch_size=1024):
    r"""The labels :math:`y` a model with labels gives its guide :math:`q_\phi(z \mid x, y)` for the items ``x``.

    - ``labels`` given (``(N,)`` class indices): those, checked.
    - ``labels=None``: a :class:`~pyro_vae.vae.labels.SemiSupervisedVAE` uses its classifier's most probable
      class, :math:`\arg\max_y q_\phi(y \mid x)`; a :class:`~pyro_vae.vae.labels.ConditionalVAE` has no
      classifier and refuses.
    - a plain :class:`~pyro_vae.vae.model.VAE` (guide :math:`q_\phi(z \mid x)`): ``None``.

    :returns: a long tensor ``(N,)`` on the model's device, or ``None`` for a plain VAE.
    :raises UserError: missing labels for a conditional model; labels out of range or of the wrong length;
        labels given to a plain VAE.
    """
    if not _labelled(vae):
        if labels is not None:
            raise UserError("labels apply to runs with labels (--conditional, --semi-supervised); this model's "
                            "guide is q(z | x)")  # fmt: skip
        return None
    device = _param(vae).device
    if labels is None:
        if isinstance(vae, SemiSupervisedVAE):
            return torch.cat([vae.predict(_as_batch(vae, x[s])) for s in _batches(len(x), batch_size)]).to(device)
        raise UserError("a --conditional model needs the items' labels: its guide is q(z | x, y)")
    return class_indices(labels, vae.num_classes, len(x)).to(device)


def _guide(vae, batch, y):
    r""":math:`q(z \mid x)` of a plain VAE, :math:`q(z \mid x, y)` (``y`` ``(B,)``) of a model with labels."""
    return vae.encoder(batch) if y is None else vae.encoder(vae.pack(batch, y))


def _closed_form(q, name):
    try:
        return getattr(q, name)
    except NotImplementedError:
        return None


@torch.no_grad()
def posterior_moments(vae, x, samples=MC_SAMPLES, labels=None):
    """Per-unit mean and variance of :math:`q_\\phi(z \\mid x)` for one batch, each ``(B, z_dim)`` (torch);
    for a model with labels of :math:`q_\\phi(z \\mid x, y)`, ``y`` from :func:`guide_labels` (``labels``).

    Closed form when the guide's distribution has ``mean`` and ``variance``; otherwise from
    ``samples`` draws under the caller's random state (see the module docstring). Returns
    ``(mean, variance, exact)``.
    """
    q = _guide(vae, x, guide_labels(vae, x, labels))
    mean, var = _closed_form(q, "mean"), _closed_form(q, "variance")
    if mean is not None and var is not None:
        return mean, var, True
    if samples < 2:
        raise UserError(f"a guide without closed-form moments needs at least 2 samples per item, got {samples}")
    z = q.sample((samples,))  # (K, B, z)
    return z.mean(0), z.var(0, unbiased=True), False


# Encoding ------------------------------------------------------------------------------------------


@torch.no_grad()
def encode(vae, x, what="mean", samples=None, batch_size=1024, seed=0, labels=None):
    r"""Latent codes of the items of ``x`` under the guide :math:`q_\phi(z \mid x)`, or for a model with
    labels :math:`q_\phi(z \mid x, y)` with ``y`` the items' ``labels`` (see :func:`guide_labels`: without
    them a semi-supervised model uses its classifier's most probable class, a conditional one refuses).

    :param vae: a :class:`~pyro_vae.vae.model.VAE` (in eval mode).
    :param x: ``(N, *item_shape)`` data prepared as the VAE expects (torch or NumPy).
    :param str what: ``"mean"``: :math:`\mathbb{E}_q[z]`, ``(N, z_dim)``; ``"scale"``: the marginal
        standard deviation of each unit, :math:`\sqrt{\mathrm{Var}_q[z_j]}`, ``(N, z_dim)``;
        ``"samples"``: ``samples`` draws per item, ``(N, K, z_dim)``.
    :param int samples: ``K``. For ``"samples"`` the number of draws (default 1). For ``"mean"`` and
        ``"scale"`` it is used only by guides without a closed form (flows), as the number of
        Monte Carlo draws (default :data:`MC_SAMPLES`); the Monte Carlo mean's standard error is
        the scale over :math:`\sqrt K`.
    :param int batch_size: items per forward pass.
    :param int seed: seeds the draws; the global random state is unchanged.
    :param labels: ``(N,)`` class indices, for a model with labels only.
    :returns: a float NumPy array (latent units, the same units as ``z``).
    :raises UserError: an unknown ``what``, ``samples`` or ``batch_size`` below 1, empty data; the labels
        errors of :func:`guide_labels`.
    """
    if what not in WHATS:
        raise UserError(f"unknown latent quantity {what!r}: choose one of {', '.join(WHATS)}")
    if samples is not None and samples < 1:
        raise UserError(f"samples must be at least 1, got {samples}")
    _check_data(x)
    k = samples if samples is not None else (1 if what == "samples" else MC_SAMPLES)
    y = guide_labels(vae, x, labels, batch_size)
    out = []
    with seeded(_param(vae).device, seed):
        for s in _batches(x.shape[0], batch_size):
            batch, yb = _as_batch(vae, x[s]), None if y is None else y[s]
            if what == "samples":
                z = _guide(vae, batch, yb).sample((k,))  # (K, B, z)
                out.append(z.transpose(0, 1).cpu())
            else:
                mean, var, _ = posterior_moments(vae, batch, max(k, 2), yb)
                out.append((mean if what == "mean" else var.sqrt()).cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def reconstruct(vae, x, sample=False, batch_size=1024, seed=0, labels=None):
    r"""Decoder means :math:`\mathbb{E}[x \mid z]` at the posterior mean of each item (``sample=False``)
    or at one draw :math:`z \sim q_\phi(z \mid x)` (``sample=True``, as :meth:`VAE.reconstruct
    <pyro_vae.vae.model.VAE.reconstruct>`). Returns a NumPy array ``(N, D)`` (the decoder's output shape).
    A model with labels encodes with :math:`q_\phi(z \mid x, y)` and decodes :math:`\mathbb{E}[x \mid z, y]`
    with the same ``y``, the items' ``labels`` (:func:`guide_labels`)."""
    y = guide_labels(vae, x, labels, batch_size)
    z = encode(vae, x, "samples" if sample else "mean", samples=1 if sample else None,
               batch_size=batch_size, seed=seed, labels=y)  # fmt: skip
    if sample:
        z = z[:, 0]
    return decode(vae, z, batch_size, labels=y)


@torch.no_grad()
def decode(vae, z, batch_size=1024, labels=None):
    """Decoder means for codes ``z`` of shape ``(..., z_dim)`` (NumPy or torch) -> NumPy ``(..., D)``.

    A model with labels decodes :math:`\\mathbb{E}[x \\mid z, y]`: ``labels`` is one class (an ``int``) for every
    code, or class indices of a shape that broadcasts against ``z.shape[:-1]``.

    :raises UserError: codes of another size; a model with labels without ``labels``, a class out of range;
        ``labels`` for a plain VAE.
    """
    z = _as_batch(vae, z)
    if z.shape[-1] != vae.z_dim:
        raise UserError(f"codes have {z.shape[-1]} units, the model has z_dim = {vae.z_dim}")
    flat = z.reshape(-1, vae.z_dim)
    if not _labelled(vae):
        if labels is not None:
            raise UserError("labels apply to runs with labels (--conditional, --semi-supervised)")
        out = torch.cat([vae.decode(flat[s]).cpu() for s in _batches(flat.shape[0], batch_size)])
    else:
        if labels is None:
            raise UserError("a model with labels decodes E[x | z, y]: give the class of each code")
        y = torch.as_tensor(labels, device=flat.device)
        y = class_indices(y.expand(z.shape[:-1]).reshape(-1), vae.num_classes, len(flat), "the class to decode with")
        out = torch.cat([vae.decode(flat[s], y[s]).cpu() for s in _batches(flat.shape[0], batch_size)])
    return out.reshape(*z.shape[:-1], *out.shape[1:]).numpy()


# Saving codes -------------------------------------------------------------------------------------


def labels_path(path):
    """The sibling file of a ``.npy`` code file that holds its labels: ``z.npy`` -> ``z.labels.npy``."""
    path = Path(path)
    return path.with_name(path.stem + ".labels.npy")


def save_codes(path, codes, labels=None):
    """Write ``codes`` (``(N, z)``, or ``(N, K, z)`` for ``.npy`` only) and optional ``labels`` (``(N,)``, or a column ``(N, 1)``).

    ``.npy``: the array as is, labels in :func:`labels_path`. ``.csv``: a header ``z0,...,z{d-1}``
    (plus ``label``), one row per item, floats written with ``repr`` precision.

    :raises UserError: another extension, 3-D codes to CSV, labels of the wrong length.
    """
    path = Path(path)
    codes = np.asarray(codes)
    if codes.ndim not in (2, 3):
        raise UserError(f"codes must have shape (N, z) or (N, K, z), got {codes.shape}")
    if labels is not None:
        labels = label_column(labels, codes.shape[0], "the labels given")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, codes)
        if labels is not None:
            np.save(labels_path(path), labels)
    elif suffix == ".csv":
        if codes.ndim != 2:
            raise UserError(f"a CSV holds one code per item; codes of shape {codes.shape} need a .npy file")
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([f"z{j}" for j in range(codes.shape[1])] + (["label"] if labels is not None else []))
            for i, row in enumerate(codes):
                w.writerow([repr(float(v)) for v in row] + ([labels[i].item()] if labels is not None else []))
    else:
        raise UserError(f"cannot write codes to {path.name}: use a .npy or .csv file")


def load_codes(path):
    """Read what :func:`save_codes` wrote: ``(codes, labels or None)``; integer-looking CSV labels become ints."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        codes = np.load(path)
        lp = labels_path(path)
        return codes, (np.load(lp) if lp.exists() else None)
    if suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        header, rows = rows[0], rows[1:]
        has_labels = header[-1] == "label"
        d = len(header) - has_labels
        codes = np.array([[float(v) for v in r[:d]] for r in rows], dtype=np.float64).reshape(len(rows), d)
        labels = None
        if has_labels:
            raw = [r[d] for r in rows]
            try:
                labels = np.array([int(v) for v in raw])
            except ValueError:
                labels = np.array(raw)
        return codes, labels
    raise UserError(f"cannot read codes from {path.name}: use a .npy or .csv file")


# Interpolation ------------------------------------------------------------------------------------


def slerp(z0, z1, t):
    r"""Spherical linear interpolation (Shoemake 1985; for latent spaces White 2016, "Sampling generative networks").

    .. math::

        \mathrm{slerp}(z_0, z_1; t) = \frac{\sin((1-t)\Omega)}{\sin\Omega} z_0 + \frac{\sin(t\Omega)}{\sin\Omega} z_1,
        \qquad \cos\Omega = \frac{z_0 \cdot z_1}{\lVert z_0 \rVert \lVert z_1 \rVert}.

    ``z0``, ``z1``: ``(z,)`` arrays; ``t``: ``(T,)`` in [0, 1]. Returns ``(T, z)`` (float64). When
    :math:`\sin\Omega \approx 0` (parallel or antiparallel codes, or a zero code) the great circle is
    not defined and the straight line is returned.
    """
    z0, z1 = np.asarray(z0, dtype=np.float64), np.asarray(z1, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)[:, None]
    n0, n1 = np.linalg.norm(z0), np.linalg.norm(z1)
    if n0 == 0 or n1 == 0:
        return (1 - t) * z0 + t * z1
    omega = np.arccos(np.clip(z0 @ z1 / (n0 * n1), -1.0, 1.0))
    so = np.sin(omega)
    if so < 1e-6:
        return (1 - t) * z0 + t * z1
    return np.sin((1 - t) * omega) / so * z0 + np.sin(t * omega) / so * z1


def interpolation_codes(z0, z1, steps=10, slerp_path=False):
    """``steps`` codes from ``z0`` to ``z1`` (both included): ``(steps, z)``, straight or spherical."""
    if steps < 2:
        raise UserError(f"an interpolation needs at least 2 steps, got {steps}")
    t = np.linspace(0.0, 1.0, steps)
    z0, z1 = np.asarray(z0, dtype=np.float64), np.asarray(z1, dtype=np.float64)
    return slerp(z0, z1, t) if slerp_path else (1 - t[:, None]) * z0 + t[:, None] * z1


def path_label(vae, ends, label=None):
    """The class a model with labels decodes an interpolation with: ``label`` when given (checked), else the
    label the two items share (``ends``, their two labels).

    :raises UserError: ``label`` out of range or given to a plain VAE; two items of different labels and no ``label``.
    """
    if not _labelled(vae):
        if label is not None:
            raise UserError("--label applies to runs with labels (trained with --conditional or --semi-supervised)")
        return None
    if label is not None:
        return int(class_indices(torch.tensor([label]), vae.num_classes, 1, "--label")[0])
    a, b = (int(v) for v in ends)
    if a != b:
        raise UserError(f"the two items have different labels ({a} and {b}) and the path is decoded with one class: "
                        f"give it with --label (0..{vae.num_classes - 1})")  # fmt: skip
    return a


@torch.no_grad()
def interpolate(vae, x_i, x_j, steps=10, slerp=False, seed=0, samples=None, labels=None, label=None):
    r"""Decoder means along a path between the posterior means of two items.

    A model with labels encodes each item with its own label, :math:`q_\phi(z \mid x_i, y_i)` (``labels``:
    the two items' labels, default as :func:`guide_labels`), and decodes the whole path with one class held
    fixed, :math:`\mathbb{E}[x \mid z_t, y]`: ``label``, by default the items' common label (:func:`path_label`).

    :param x_i, x_j: one item each, of the VAE's item shape (``(D,)``, or ``(C, H, W)`` for image nets),
        prepared as the VAE expects.
    :param int steps: images on the path, endpoints included (at least 2).
    :param bool slerp: the spherical path of :func:`slerp` instead of the straight line.
    :param int seed, samples: for the Monte Carlo posterior mean of flow guides (see :func:`encode`).
    :returns: ``(codes, images)``: NumPy ``(steps, z_dim)`` and ``(steps, D)``.
    :raises UserError: fewer than 2 steps, items of different shapes; the labels errors of :func:`guide_labels`
        and :func:`path_label`.
    """
    x_i, x_j = torch.as_tensor(x_i), torch.as_tensor(x_j)
    if x_i.shape != x_j.shape:
        raise UserError(f"the two items have different shapes {tuple(x_i.shape)} and {tuple(x_j.shape)}")
    pair = torch.stack([x_i, x_j])
    ends = guide_labels(vae, pair, labels)
    y = path_label(vae, ends if ends is not None else (None, None), label)
    z = encode(vae, pair, "mean", samples=samples, seed=seed, labels=ends)
    codes = interpolation_codes(z[0], z[1], steps, slerp)
    return codes.astype(z.dtype), decode(vae, codes, labels=y)


# Traversals ---------------------------------------------------------------------------------------


def gaussian_unit_kl(mean, var):
    r""":math:`\tfrac12(m^2 + v - 1 - \log v)`: KL of :math:`\mathcal{N}(m, v)` from :math:`\mathcal{N}(0, 1)` per unit (nats)."""
    return 0.5 * (mean**2 + var - 1.0 - torch.log(var))


@torch.no_grad()
def unit_kl(vae, data, samples=MC_SAMPLES, batch_size=1024, seed=0, labels=None):
    r"""Average over the items of ``data`` of :math:`\mathrm{KL}(q(z_j \mid x) \,\|\, \mathcal{N}(0, 1))`,
    per unit ``j``: NumPy ``(z_dim,)`` in nats. Exact for Gaussian guides, a Monte Carlo lower
    bound from ``samples`` draws for others (see the module docstring). A model with labels: of
    :math:`q(z_j \mid x, y)`, ``y`` the items' ``labels`` (:func:`guide_labels`)."""
    _check_data(data, "data")
    y = guide_labels(vae, data, labels, batch_size)
    total = torch.zeros(vae.z_dim, dtype=torch.float64)
    with seeded(_param(vae).device, seed):
        for s in _batches(data.shape[0], batch_size):
            mean, var, _ = posterior_moments(vae, _as_batch(vae, data[s]), samples, None if y is None else y[s])
            total += gaussian_unit_kl(mean.double(), var.double()).sum(0).cpu()
    return (total / data.shape[0]).numpy()


def _standard(vae):
    prior = getattr(vae, "prior_module", None)
    return prior is None or isinstance(prior, StandardPrior)


def prior_ranges(vae):
    """Each unit's prior marginal mean and standard deviation, NumPy ``(z_dim,)`` each: 0 and 1 for the
    standard prior, else :meth:`~pyro_vae.vae.priors.Prior.marginals` (estimated from draws of a fixed seed)."""
    if _standard(vae):
        return np.zeros(vae.z_dim), np.ones(vae.z_dim)
    with preserved_rng(_param(vae).device):
        mean, std, _ = vae.prior_module.marginals()
    return mean.double().cpu().numpy(), std.double().cpu().numpy()


@torch.no_grad()
def traverse(vae, x=None, units=None, span=3.0, steps=9, data=None, top=None, samples=None, seed=0, label=None,
             x_label=None, data_labels=None):
    r"""Latent traversals: vary one unit at a time, the others held at the code of an item.

    The base code is the posterior mean of the item ``x`` (shape ``item_shape``), or the prior's
    mean (0 for the standard prior) when ``x`` is None. For each unit ``j``, ``z_j`` takes ``steps``
    values evenly spaced on ``[-span, span]`` prior standard deviations: absolute, as in Higgins et
    al. 2017, for :math:`\mathcal{N}(0, I)`; for a learned prior, ``m_j + [-span, span] s_j`` with
    ``m_j, s_j`` the mean and standard deviation of the prior's marginal of unit ``j``
    (:func:`prior_ranges`). The decoder means are returned.

    A model with labels encodes ``x`` with :math:`q_\phi(z \mid x, y)`, ``y`` its ``x_label`` (default as
    :func:`guide_labels`), and decodes :math:`\mathbb{E}[x \mid z, y]` with the class ``label``, by default the
    item's; with neither ``label`` nor ``x``, with every class in turn: the images are then ``(U, C, steps, D)``,
    one block of ``C`` rows (classes ``0 .. C - 1``) per unit. ``data_labels``: the labels of ``data``, for the KL.

    :param units: unit indices in the order wanted; ``None``: all units, ordered by decreasing
        :func:`unit_kl` over ``data`` (by index when ``data`` is None).
    :param int top: keep only the first ``top`` units of that order.
    :param data: ``(N, *item_shape)`` items over which the KL is averaged.
    :returns: ``(units, images)``: NumPy ``(U,)`` ints and ``(U, steps, D)`` (``(U, C, steps, D)``, see above).
    :raises UserError: a unit out of range, ``steps`` below 2, ``span`` not positive; a ``label`` out of range
        or given to a plain VAE; the labels errors of :func:`guide_labels`.
    """
    if steps < 2:
        raise UserError(f"a traversal needs at least 2 steps, got {steps}")
    if not span > 0:
        raise UserError(f"the traversal range must be positive, got {span}")
    zd = vae.z_dim
    if units is None:
        if data is None:
            order = np.arange(zd)
        else:
            order = np.argsort(-unit_kl(vae, data, samples or MC_SAMPLES, seed=seed, labels=data_labels), kind="stable")
    else:
        order = np.asarray([int(u) for u in units], dtype=np.int64)
        bad = [int(u) for u in order if not 0 <= u < zd]
        if bad:
            raise UserError(f"latent unit(s) {bad} out of range: the model has units 0..{zd - 1}")
    if top is not None:
        if top < 1:
            raise UserError(f"top must be at least 1, got {top}")
        order = order[:top]
    y = path_label(vae, (None, None), label) if label is not None or not _labelled(vae) else None
    center, scale = prior_ranges(vae)
    if x is None:
        base = center
    else:
        item = torch.as_tensor(x)[None]
        own = guide_labels(vae, item, None if x_label is None else [x_label])
        base = encode(vae, item, "mean", samples=samples, seed=seed, labels=own)[0]
        y = y if y is not None or own is None else int(own[0])
    values = np.linspace(-span, span, steps)
    codes = np.repeat(base[None, None].astype(np.float64), len(order), 0).repeat(steps, 1)  # (U, steps, z)
    for r, j in enumerate(order):
        codes[r, :, j] = values if _standard(vae) else center[j] + values * scale[j]
    codes = codes.astype(np.float32)
    if _labelled(vae) and y is None:  # every class in turn: (U, C, steps, z)
        classes = np.arange(vae.num_classes)[None, :, None]
        return order, decode(vae, np.repeat(codes[:, None], vae.num_classes, 1), labels=classes)
    return order, decode(vae, codes, labels=y)


# The scatter of the codes -------------------------------------------------------------------------

METHODS = ("auto", "pca", "tsne")


def project_2d(codes, method="auto", seed=0, tsne_options=None):
    r"""2-D coordinates of ``codes`` ``(N, z)`` for a scatter: ``(coords (N, 2), method used)``.

    ``z = 2``: the plane itself (``"plane"``). ``z = 1``: the unit against a fixed-seed jitter
    (``"line"``). Otherwise ``"auto"`` and ``"pca"``: the first two principal components
    (:class:`sklearn.decomposition.PCA`, linear, fast, deterministic); ``"tsne"``:
    :class:`sklearn.manifold.TSNE` (van der Maaten & Hinton 2008; perplexity
    :math:`\min(30, (N-1)/3)`, ``random_state=seed``, PCA initialization, other keywords from
    ``tsne_options``, e.g. ``{"max_iter": 250}``; slow beyond a few thousand items).
    """
    if method not in METHODS:
        raise UserError(f"unknown projection {method!r}: choose one of {', '.join(METHODS)}")
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] < 1:
        raise UserError(f"codes must have shape (N, z), got {codes.shape}")
    n, d = codes.shape
    if d == 2:
        return codes, "plane"
    if d == 1:
        jitter = np.random.default_rng(seed).uniform(-1, 1, n)
        return np.stack([codes[:, 0], jitter], 1), "line"
    if method == "tsne":
        if n < 4:
            raise UserError(f"t-SNE needs at least 4 items, got {n}")
        from sklearn.manifold import TSNE

        options = dict(n_components=2, perplexity=min(30.0, (n - 1) / 3), random_state=seed, init="pca")
        tsne = TSNE(**{**options, **(tsne_options or {})})
        return tsne.fit_transform(codes), "tsne"
    if n < 2:
        raise UserError("PCA needs at least 2 items")
    from sklearn.decomposition import PCA

    return PCA(n_components=2).fit_transform(codes), "pca"


def latent_scatter(codes, labels=None, path="latents.png", method="auto", seed=0, title=None, tsne_options=None,
                   note=None):  # fmt: skip
    """Write a 2-D scatter of ``codes`` (``(N, z)``, e.g. posterior means) coloured by ``labels`` as a PNG.
    The title is ``title``, by default ``"posterior means (<method>)"`` followed by ``note``.

    Integer or string labels with at most 20 values get one colour each and a legend; other
    numeric labels a continuous colour map and a colour bar. The projection is :func:`project_2d`.
    Returns ``(coords (N, 2), method used)``.

    :raises UserError: labels of the wrong length, an unknown method.
    """
    from . import plots

    coords, used = project_2d(codes, method, seed, tsne_options)
    if labels is not None:
        labels = label_column(labels, coords.shape[0], "the labels given")
    axes = {"plane": ("z0", "z1"), "line": ("z0", "jitter"), "pca": ("PC 1", "PC 2"), "tsne": ("t-SNE 1", "t-SNE 2")}
    plots.save_scatter(coords, labels, path, axes[used], title or f"posterior means ({used})" + (f" {note}" if note else ""))
    return coords, used


# On a trained run (what ``pyro-vae encode/reconstruct/interpolate/traverse/latents`` call) ---------
#
# These take a :class:`~pyro_vae.runs.run.Run` (duck-typed: ``run.config``, ``run.vae``, ``run.device``,
# ``run.meta``, ``run.image_shape``; this module sits below ``run`` in the layers so that ``Run``'s
# methods can call it) and read the data exactly as the run was trained and tested on it.

#: the data splits a run's items come from (``val`` comes with the validation split)
SPLITS = ("train", "val", "test")


def _prepare(run, x, what, generator_seed):
    """``x`` ``(N, *item_shape)`` checked and fully prepared for the run's likelihood, with a fixed draw of its
    random part."""
    likelihood = run.vae.likelihood
    likelihood.check_data(x, what)
    x = likelihood.prepare_static(x.to(run.device))
    return likelihood.prepare_batch(x, torch.Generator(device=run.device).manual_seed(generator_seed))


def read_labels(path, n):
    """A user's labels file (``.npy`` of shape ``(n,)`` or a column ``(n, 1)``, numbers or strings) as a
    NumPy array of shape ``(n,)``.

    :raises UserError: a missing or unreadable file, another suffix, a shape other than ``(n,)`` or ``(n, 1)``.
    """
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise UserError(f"--labels must be a .npy file of shape (N,), got {path.name}")
    if not path.exists():
        raise UserError(f"--labels file {path} does not exist")
    try:
        labels = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises several types for a damaged or pickled file
        raise UserError(f"cannot read --labels file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return label_column(labels, n, f"--labels file {path}")


def run_items(run, split="test", data=None, labels=None):
    """The items a latent tool works on, prepared as the run saw them: ``(x, labels, description)``.

    :param str split: ``"train"``, ``"val"`` or ``"test"`` of the run's own data (ignored with ``data``). The
        test and validation sets are prepared as for evaluation (same fixed draw of dynamic binarization or
        dequantization noise); the training set gets a fixed draw of its own (seed ``config.seed + 10007``).
    :param data: a user's array file (``.npy``/``.npz``/``.pt``, read by the rules of ``--data``) of
        items of the run's size ``D``; labels stored beside it are kept.
    :param labels: a ``.npy`` file or an array of shape ``(N,)`` (or ``(N, 1)``) that replaces the data's own labels.
    :returns: ``x`` ``(N, *item_shape)`` on the run's device, ``labels`` (NumPy ``(N,)`` or None), e.g. ``"the test split"``.
    :raises UserError: an unknown split, data of another size or outside the likelihood's support,
        labels of the wrong length.
    """
    from ..data.files import _labels, _read_file, interpret_array
    from ..train.build import TEST_PREP_SEED, prepare_data, prepare_valid

    seed = run.config.seed + TEST_PREP_SEED
    if data is not None:
        contents = _read_file(data, "--data")
        x, _, _ = interpret_array(contents.x, "--data", data)
        d = int(run.meta["x_dim"])
        if len(x) == 0 or x[0].numel() != d:
            raise UserError(f"--data file {data} holds items of {x[0].numel() if len(x) else 0} values; the run's model "
                            f"takes {d}")  # fmt: skip
        x = x.reshape(len(x), *run.vae.x_shape)
        own = _labels(contents.labels, len(x), "--data", data)
        x, what = _prepare(run, x, "the --data file", seed), f"{Path(data).name}"
    else:
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
        dataset, train, test = prepare_data(run.config, run.vae.likelihood, run.device)
        if split == "test":
            x, own = test, dataset.test_labels
        elif split == "val":
            x, own = prepare_valid(run.config, run.vae.likelihood, run.device, dataset), dataset.valid_labels
            if x is None:
                raise UserError("this run has no validation split (its training set was too small to carve one)")
        else:
            x = run.vae.likelihood.prepare_batch(train, torch.Generator(device=run.device).manual_seed(seed))
            own = dataset.labels
        what = f"the {split} split"
    own = None if own is None else np.asarray(own.cpu() if hasattr(own, "cpu") else own)
    if labels is not None:
        own = read_labels(labels, len(x)) if isinstance(labels, (str, Path)) else label_column(labels, len(x), f"the labels array for {what}")
    return x, own, what


def _check_png(path):
    if path is not None and not str(path).lower().endswith(".png"):
        raise UserError(f"-o must name a .png file, got {path}")


def _display_range(run):
    return run._display_range() if hasattr(run, "_display_range") else (0.0, 1.0)


def _given(labels):
    """How messages name labels the user gave (``None``: the data's own)."""
    if labels is None:
        return None
    return f"--labels {Path(labels).name}" if isinstance(labels, (str, Path)) else "the labels given"


def run_labels(run, x, labels, what, given=None, use_classifier=False, tool="encode"):
    r"""The labels :math:`y` a run with labels gives its guide :math:`q_\phi(z \mid x, y)` for the items ``x`` of
    :func:`run_items`, and where they come from: ``(y, source)``, ``y`` a long tensor ``(N,)`` on the run's device
    and ``source`` a phrase for messages and titles (e.g. ``"the labels of the test split"``); ``(None, None)``
    for a plain run.

    - ``--conditional``: the items' ``labels`` (the split's, the ``--data`` file's, or the user's ``--labels``);
      without them an error.
    - ``--semi-supervised``: the items' ``labels`` when there are any, else (and always with ``use_classifier``)
      the classifier's most probable class :math:`\arg\max_y q_\phi(y \mid x)`.

    :param labels: the items' labels as :func:`run_items` returns them (NumPy ``(N,)`` or None).
    :param str what: the items, for messages (``"the test split"``).
    :param given: how to name ``labels`` when the user gave them (``"--labels y.npy"``); ``None``: the data's own.
    :param str tool: the command, for messages.
    :raises UserError: no labels for a conditional run; labels that are not class indices of the run's classes;
        ``use_classifier`` for a run without a classifier, or with ``labels`` the user gave.
    """
    vae = run.vae
    semi = isinstance(vae, SemiSupervisedVAE)
    if use_classifier and not semi:
        raise UserError("--use-classifier applies to --semi-supervised runs (only they have a classifier q(y | x))")
    if not _labelled(vae):
        return None, None
    if use_classifier:
        if given is not None:
            raise UserError(f"{given} and --use-classifier exclude each other: choose the labels or the classifier")
        return guide_labels(vae, x), "the classifier's most probable class"
    if labels is None:
        if semi:
            return guide_labels(vae, x), f"the classifier's most probable class ({what} has no labels)"
        raise UserError(f"{tool} on a --conditional run needs the items' labels ({what} has none): give them with "
                        "--labels FILE (a .npy of class indices, shape (N,))")  # fmt: skip
    source = given or f"the labels of {what}"
    return class_indices(labels, vae.num_classes, len(x), source).to(run.device), source


def _plain_only_data_labels(run, labels, tool):
    if labels is not None and not _labelled(run.vae):
        raise UserError(f"--labels applies to {tool} on runs with labels (--conditional, --semi-supervised)")


class Codes(tuple):
    """``(codes, labels)`` as :func:`encode_run` returns them, with :attr:`source`: where a run with labels took
    the labels it gave its guide (``labels`` are then those labels); ``None`` for a plain run (``labels`` are
    the data's, saved beside the codes)."""

    def __new__(cls, codes, labels, source=None):
        self = super().__new__(cls, (codes, labels))
        self.source = source
        return self


def encode_run(run, split="test", data=None, what="mean", samples=None, labels=None, path=None, seed=0,
               use_classifier=False):  # fmt: skip
    """:func:`encode` the items of :func:`run_items`; with ``path`` (``.npy``/``.csv``) also :func:`save_codes`.

    A run with labels encodes with :math:`q(z \\mid x, y)`, ``y`` from :func:`run_labels` (``--conditional``: the
    items' labels, required; ``--semi-supervised``: the items' labels if any, else or with ``use_classifier``
    the classifier's most probable class); the labels saved beside the codes are those ``y``.

    :returns: a :class:`Codes`, ``(codes, labels)``: ``(N, z)`` (``(N, K, z)`` for ``what="samples"``) and
        ``(N,)`` or None.
    """
    if path is not None and Path(path).suffix.lower() not in (".npy", ".csv"):
        raise UserError(f"cannot write codes to {Path(path).name}: use a .npy or .csv file")
    if path is not None and what == "samples" and Path(path).suffix.lower() == ".csv":
        raise UserError("a CSV holds one code per item; --what samples needs a .npy file")
    x, own, items = run_items(run, split, data, labels)
    y, source = run_labels(run, x, own, items, _given(labels), use_classifier, "encode")
    codes = encode(run.vae, x, what, samples=samples, seed=seed, labels=y)
    used = own if y is None else y.cpu().numpy()
    if path is not None:
        save_codes(path, codes, used)
    return Codes(codes, used, source)


def save_reconstructions(run, path, n=16, split="test", data=None, sample=False, seed=0, labels=None,
                         use_classifier=False):  # fmt: skip
    """Write ``path``: the first ``n`` items (top row) above their reconstructions (:func:`reconstruct`,
    at the posterior mean, or at one draw with ``sample``). Returns the reconstructions ``(n, D)``.

    A run with labels encodes and decodes each item with its label, from :func:`run_labels` (``labels``,
    ``use_classifier``); the title says which."""
    from . import plots

    _check_png(path)
    if n < 1:
        raise UserError(f"-n must be at least 1, got {n}")
    _plain_only_data_labels(run, labels, "reconstruct")
    x, own, what = run_items(run, split, data, labels)
    x, own = x[:n], None if own is None else own[:n]
    y, source = run_labels(run, x, own, what, _given(labels), use_classifier, "reconstruct")
    recon = reconstruct(run.vae, x, sample=sample, seed=seed, labels=y)
    q = "q(z|x)" if y is None else "q(z|x,y)"
    how = f"one draw from {q}" if sample else f"the posterior mean of {q}"
    title = f"{len(x)} items of {what} and their reconstructions at {how}"
    if y is not None:
        title += f";\ny: {source} ({', '.join(str(int(v)) for v in y[:12])}{', ...' if len(y) > 12 else ''})"
    plots.save_image_rows(np.stack([x.reshape(len(x), -1).cpu().numpy(), recon]), run.image_shape, path,
                          row_labels=["input", "recon"], title=title, value_range=_display_range(run))  # fmt: skip
    return recon


def _item_index(i, n, what):
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < n:
        raise UserError(f"item {i!r} out of range: {what} has items 0..{n - 1}")
    return int(i)


def interpolate_run(run, i, j, steps=10, slerp=False, split="test", data=None, path=None, seed=0, label=None,
                    labels=None, use_classifier=False):  # fmt: skip
    """:func:`interpolate` between items ``i`` and ``j`` of :func:`run_items`; with ``path``, a PNG row of the
    ``steps`` decoded images. Returns ``(codes (steps, z), images (steps, D))``.

    A run with labels encodes each item with its own label (:func:`run_labels`: ``labels``, ``use_classifier``)
    and decodes the path with one class held fixed: ``label``, by default the two items' common label (two items
    of different labels and no ``label``: an error)."""
    from . import plots

    _check_png(path)
    _plain_only_data_labels(run, labels, "interpolate")
    x, own, what = run_items(run, split, data, labels)
    i, j = _item_index(i, len(x), what), _item_index(j, len(x), what)
    ends, source = run_labels(run, x[[i, j]], None if own is None else own[[i, j]], what, _given(labels),
                              use_classifier, "interpolate")  # fmt: skip
    codes, images = interpolate(run.vae, x[i], x[j], steps=steps, slerp=slerp, seed=seed, labels=ends, label=label)
    if path is not None:
        rows = np.stack([np.concatenate([x[i : i + 1].reshape(1, -1).cpu().numpy(), images, x[j : j + 1].reshape(1, -1).cpu().numpy()])])
        kind = "spherical (slerp)" if slerp else "linear"
        title = f"items {i} and {j} of {what} (ends), {kind} path between their posterior means"
        if ends is not None:
            held = path_label(run.vae, ends, label)
            title += (f";\nlabels {int(ends[0])} and {int(ends[1])} ({source}), the path decoded with class {held}")
        plots.save_image_rows(rows, run.image_shape, path, title=title, value_range=_display_range(run))
    return codes, images


def traverse_run(run, units=None, span=3.0, steps=9, item=None, top=None, split="test", data=None, path=None, seed=0,
                 label=None, labels=None, use_classifier=False):  # fmt: skip
    """:func:`traverse` with the units ordered by :func:`unit_kl` over :func:`run_items` (unless ``units``
    are given), from the item ``item``'s posterior mean (default: the prior mean 0). With ``path``,
    a PNG with one row per unit labelled ``z<j>  KL <nats>``.

    A run with labels: the KL is that of :math:`q(z_j \\mid x, y)` over the items with their labels
    (:func:`run_labels`: ``labels``, ``use_classifier``); the images are decoded with the class ``label``, by
    default ``item``'s label, and with neither, with every class: one block of ``C`` rows per unit.

    :returns: ``(units (U,), kl (U,) nats, images (U, steps, D))``; ``(U, C, steps, D)`` for every class.
    """
    from . import plots

    _check_png(path)
    _plain_only_data_labels(run, labels, "traverse")
    if label is not None:
        path_label(run.vae, (None, None), label)  # checked before the work
    x, own, what = run_items(run, split, data, labels)
    y, source = run_labels(run, x, own, what, _given(labels), use_classifier, "traverse")
    kl = unit_kl(run.vae, x, seed=seed, labels=y)
    if units is None:
        units = np.argsort(-kl, kind="stable")
    index = None if item is None else _item_index(item, len(x), what)
    base = None if index is None else x[index]
    x_label = None if y is None or index is None else int(y[index])
    order, images = traverse(run.vae, base, units=units, span=span, steps=steps, top=top, seed=seed, label=label,
                             x_label=x_label)  # fmt: skip
    if path is not None:
        start = "the prior mean" if item is None else f"item {item}"
        if _standard(run.vae):
            title = f"each unit from -{span:g} to {span:g} around {start}; KL over {what}"
        else:
            title = (f"each unit over ±{span:g} sd of {run.vae.prior_module.describe()}'s marginal, around {start}; "
                     f"KL to N(0, 1) over {what}")  # fmt: skip
        rows, row_labels = images, [f"z{u}  KL {kl[u]:.2f}" for u in order]
        if images.ndim == 4:  # every class: a block of C rows per unit
            c = run.vae.num_classes
            rows = images.reshape(len(order) * c, *images.shape[2:])
            row_labels = [f"z{u}  KL {kl[u]:.2f}  y=0" if k == 0 else f"y={k}" for u in order for k in range(c)]
            title += f";\nKL of q(z|x,y), y: {source}; decoded with each class (one row per class)"
        elif y is not None:
            held = label if label is not None else x_label
            title += f";\nKL of q(z|x,y), y: {source}; decoded with class {held}"
        plots.save_image_rows(rows, run.image_shape, path, row_labels=row_labels, title=title,
                              value_range=_display_range(run))  # fmt: skip
    return order, kl[order], images


def latents_run(run, path, method="auto", split="test", data=None, labels=None, seed=0, tsne_options=None,
                use_classifier=False):  # fmt: skip
    """:func:`latent_scatter` of the posterior means of :func:`run_items`, coloured by their labels.
    Returns ``(coords (N, 2), method used)``.

    A run with labels: the means of :math:`q(z \\mid x, y)`, ``y`` from :func:`run_labels` (``labels``,
    ``use_classifier``), and the points coloured by those ``y``; the title says which labels."""
    _check_png(path)
    x, own, what = run_items(run, split, data, labels)
    y, source = run_labels(run, x, own, what, _given(labels), use_classifier, "latents")
    codes = encode(run.vae, x, "mean", seed=seed, labels=y)
    if y is None:
        return latent_scatter(codes, own, path, method, seed, tsne_options=tsne_options)
    return latent_scatter(codes, y.cpu().numpy(), path, method, seed, tsne_options=tsne_options,
                          note=f"q(z|x,y) of {what};\ny and colour: {source}")
