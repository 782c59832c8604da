r"""Paired comparison of two configurations on the same test items, with an honest standard error.

Two configurations A and B (two guides, objectives, latent sizes...) trained with the same seeds
and scored on the same test items give per-item scores :math:`a_{si}` and :math:`b_{si}` (e.g.
the importance-sampled :math:`\log p(x_i)` in nats) for seeds :math:`s = 1..S` and items
:math:`i = 1..N`. Pairing by item removes the large item-to-item variation that both share (some
digits are easy for every model), so a small difference can be resolved.

**The estimate.** :math:`d_{si} = a_{si} - b_{si}`, per-seed means :math:`m_s = \frac1N\sum_i d_{si}`,
per-item means over seeds :math:`\bar d_i = \frac1S\sum_s d_{si}`, and the difference

.. math::

    \hat\Delta = \frac1S \sum_s m_s = \frac1N \sum_i \bar d_i .

**Its standard error.** Two things vary if the experiment is repeated: the training seeds (the
models) and the test items (a sample of the data distribution). Under a two-way random-effects
model :math:`d_{si} = \Delta + \alpha_s + \beta_i + \gamma_{si}` (seed, item and interaction
effects with variances :math:`\sigma_\alpha^2, \sigma_\beta^2, \sigma_\gamma^2`),
:math:`\mathrm{Var}\,\hat\Delta = \sigma_\alpha^2/S + \sigma_\beta^2/N + \sigma_\gamma^2/(SN)`. We use

.. math::

    \mathrm{SE} = \sqrt{\mathrm{SE}_\text{seeds}^2 + \mathrm{SE}_\text{items}^2}, \qquad
    \mathrm{SE}_\text{seeds} = \frac{\mathrm{sd}_s(m_s)}{\sqrt S}, \qquad
    \mathrm{SE}_\text{items} = \frac{\mathrm{sd}_i(\bar d_i)}{\sqrt N},

(sample standard deviations, ddof 1; :math:`\mathrm{SE}_\text{seeds} = 0` for one seed). The seed
term treats the seed means as the replicates (it estimates
:math:`\sigma_\alpha^2/S + \sigma_\gamma^2/(SN)`), the item term is the paired standard error over
items of the seed-averaged differences (it estimates :math:`\sigma_\beta^2/N + \sigma_\gamma^2/(SN)`);
their sum counts the small interaction term twice, so the SE is slightly conservative, never
optimistic. With one seed it is the classic paired standard error over items,
:math:`\mathrm{sd}_i(d_i)/\sqrt N`, which says nothing about training noise: the statement
then says "1 seed". The seed-only SE (the seed means as replicates) has only :math:`S-1` degrees of
freedom and can be accidentally tiny for 2 or 3 seeds; adding the item term guards against that.

**The verdict.** A and B are *indistinguishable* when :math:`|\hat\Delta| < 2\,\mathrm{SE}`
(about a 95% interval containing 0); otherwise the one with the higher score (for
``higher_is_better``) *beats* the other by :math:`|\hat\Delta| \pm \mathrm{SE}`.
"""

import math

import numpy as np

from ..errors import UserError

#: A mean paired difference within this many standard errors is "indistinguishable".
THRESHOLD_SE = 2.0


def _as_seed_item(scores, name):
    a = np.asarray(scores, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise UserError(f"scores of {name} must have shape (items,) or (seeds, items), got {a.shape}")
    if not np.isfinite(a).all():
        raise UserError(f"scores of {name} contain NaN or infinite values")
    return a


def paired_difference(scores_a, scores_b):
    r"""The paired difference A − B over items and seeds, with its standard error (see the module docstring).

    :param scores_a, scores_b: per-item scores, ``(N,)`` for one seed or ``(S, N)`` (seed ``s`` of
        A paired with seed ``s`` of B; item ``i`` the same test item in both), in any unit (nats).
    :returns: dict with ``mean`` (:math:`\hat\Delta`), ``se``, ``se_seeds``, ``se_items``,
        ``z`` (mean / se, ``inf`` when se is 0 and mean is not), ``n_items``, ``n_seeds``,
        ``seed_means`` (:math:`m_s`, list), ``seed_ses`` (each seed's own paired SE over items, list),
        ``item_wins`` (fraction of (seed, item) pairs with :math:`d_{si} > 0`), ``seed_wins``
        (number of seeds with :math:`m_s > 0`), ``indistinguishable`` (:math:`|\hat\Delta| < 2\,\mathrm{SE}`).
    :raises UserError: shapes that differ, fewer than 2 items, non-finite scores.
    """
    a, b = _as_seed_item(scores_a, "A"), _as_seed_item(scores_b, "B")
    if a.shape != b.shape:
        raise UserError(
            f"paired scores must cover the same seeds and items: shapes {a.shape} and {b.shape} differ"
        )
    s, n = a.shape
    if n < 2:
        raise UserError(f"a paired standard error needs at least 2 items, got {n}")
    d = a - b
    seed_means = d.mean(1)
    item_means = d.mean(0)
    mean = float(d.mean())
    se_seeds = float(seed_means.std(ddof=1) / math.sqrt(s)) if s > 1 else 0.0
    se_items = float(item_means.std(ddof=1) / math.sqrt(n))
    se = math.sqrt(se_seeds**2 + se_items**2)
    z = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))
    return {
        "mean": mean,
        "se": se,
        "se_seeds": se_seeds,
        "se_items": se_items,
        "z": z,
        "n_items": n,
        "n_seeds": s,
        "seed_means": [float(v) for v in seed_means],
        "seed_ses": [float(v) for v in d.std(1, ddof=1) / math.sqrt(n)],
        "item_wins": float((d > 0).mean()),
        "seed_wins": int((seed_means > 0).sum()),
        "indistinguishable": bool(abs(mean) < THRESHOLD_SE * se),
    }


def _decimals(se):
    """Decimals that show the standard error to two significant digits (0 to 4)."""
    if not se > 0 or not math.isfinite(se):
        return 2
    return int(min(4, max(0, 1 - math.floor(math.log10(se)))))


def statement(name_a, name_b, result, unit="nats", higher_is_better=True):
    """One sentence for a :func:`paired_difference` result, e.g.
    ``"iaf beats diagonal by 1.3 ± 0.2 nats (paired over 3 seeds × 10000 items; ± 1 SE)"`` or
    ``"iaf and diagonal are indistinguishable: iaf − diagonal = 0.1 ± 0.3 nats (...)"``.

    ``result`` is A − B for ``name_a`` = A; with ``higher_is_better=False`` (e.g. bits/dim) a
    negative difference means A wins.
    """
    mean, se = result["mean"], result["se"]
    k = _decimals(se)
    seeds = result["n_seeds"]
    where = (f"paired over {seeds} seed{'s' if seeds != 1 else ''} × {result['n_items']} items; ± 1 SE"
             + ("; training noise not measured" if seeds == 1 else ""))  # fmt: skip
    if result["indistinguishable"]:
        return (f"{name_a} and {name_b} are indistinguishable: {name_a} − {name_b} = {mean:+.{k}f} ± {se:.{k}f} "
                f"{unit} ({where})")  # fmt: skip
    a_wins = (mean > 0) == higher_is_better
    winner, loser = (name_a, name_b) if a_wins else (name_b, name_a)
    return f"{winner} beats {loser} by {abs(mean):.{k}f} ± {se:.{k}f} {unit} ({where})"


def all_pairs(scores_by_config, unit="nats", higher_is_better=True):
    """:func:`paired_difference` and :func:`statement` for every pair of configurations.

    :param dict scores_by_config: ``{name: scores}`` with ``scores`` as in :func:`paired_difference`,
        all of the same shape (the same seeds and the same test items, scored on the same data:
        the caller keeps groups scored on different data apart).
    :returns: a list, one dict per unordered pair in the order of the mapping, oriented so that
        ``a`` is the better of the two (``mean`` in favour of ``a``): the keys of
        :func:`paired_difference` plus ``a``, ``b`` and ``statement``.
    """
    names = list(scores_by_config)
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = names[i], names[j]
            result = paired_difference(scores_by_config[a], scores_by_config[b])
            if (result["mean"] < 0) == higher_is_better and result["mean"] != 0:
                a, b = b, a
                result = paired_difference(scores_by_config[a], scores_by_config[b])
            out.append({"a": a, "b": b, **result, "statement": statement(a, b, result, unit, higher_is_better)})
    return out
