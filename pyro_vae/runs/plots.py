"""Pictures of a run: image grids (samples, reconstructions, the 2-D manifold) and ELBO curves."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def tile(images, ncol):
    """``(N, H, W)`` array -> one ``(rows*(H+1)-1, ncol*(W+1)-1)`` mosaic with 1-pixel gaps."""
    n, h, w = images.shape
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + 1) - 1, ncol * (w + 1) - 1), np.nan)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = im
    return grid


def _to_images(x, image_shape):
    x = x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float32)
    return x.reshape(-1, *image_shape).numpy()


def save_grid(x, image_shape, path, ncol=None, title=None, value_range=(0.0, 1.0)):
    """Save ``x`` (``(N, D)`` or ``(N, *image_shape)``) as a grid of images drawn by
    :func:`torchvision.utils.make_grid` (:func:`image_grid`): grayscale for one channel, in colour
    for three (RGBA: the alpha channel is not shown), white 1-pixel gaps. Values are shown on
    ``value_range`` (clipped); ``None`` uses the data's own min and max.

    :param image_shape: ``(H, W)`` or ``(C, H, W)``.
    :param ncol: images per row (default: a square grid).
    """
    n = len(x)
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    grid = image_grid(x, image_shape, nrow=ncol, padding=1, value_range=value_range)
    height, width = grid.shape[:2]
    k = int(np.clip(np.ceil(600 / width), 1, 8))  # whole screen pixels per image pixel: crisp, small files
    title_h = 30 if title else 0
    fig = plt.figure(figsize=(width * k / 100, (height * k + title_h) / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, height * k / (height * k + title_h)])
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    fig.savefig(path)
    plt.close(fig)


def save_curves(metrics, path, title=None):
    """Train and validation ELBO (nats per datapoint) by epoch (test ELBO for runs from before validation)."""
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    weighted = any("kl_weight" in m for m in metrics)  # --beta, --kl-warmup, --free-bits: not the ELBO
    ax.plot(epochs, [m["train_elbo"] for m in metrics], "o-", ms=3,
            label="train objective (KL weighted)" if weighted else "train ELBO")  # fmt: skip
    held = "valid_elbo" if any(m.get("valid_elbo") is not None for m in metrics) else "test_elbo"
    values = [m.get(held) for m in metrics]
    ax.plot(epochs, [float("nan") if v is None else v for v in values], "s-", ms=3,
            label="validation ELBO" if held == "valid_elbo" else "test ELBO")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per datapoint (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def manifold_codes(n=20, device=None, dtype=None):
    """An ``n x n`` grid over the latent plane, evenly spaced in probability under :math:`\\mathcal{N}(0, I)`.

    As the paper's Figure 4: the linearly spaced unit square mapped through the inverse Gaussian CDF.
    """
    p = torch.linspace(0.5 / n, 1 - 0.5 / n, n, dtype=torch.float64)
    v = torch.distributions.Normal(0.0, 1.0).icdf(p)
    z1, z2 = torch.meshgrid(v, -v, indexing="xy")  # rows top to bottom: z2 decreasing
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)
    return z.to(device=device, dtype=dtype or torch.float32)


def prior_manifold_codes(prior, n=20, device=None, dtype=None):
    """An ``n x n`` grid over the latent plane of a 2-D ``prior`` (:class:`~pyro_vae.vae.priors.Prior`), evenly
    spaced in probability under each unit's marginal: the quantiles :math:`(i + 1/2)/n` of each marginal
    (exact for ``standard``, where it is :func:`manifold_codes`; else estimated from draws). Returns
    ``(codes (n*n, 2), caption)``; the caption is ``None`` for the standard prior."""
    from ..vae.priors import StandardPrior

    if isinstance(prior, StandardPrior):
        return manifold_codes(n, device, dtype), None
    p = torch.linspace(0.5 / n, 1 - 0.5 / n, n, dtype=torch.float64)
    _, _, q = prior.marginals(quantiles=p.tolist())
    z1, z2 = torch.meshgrid(q[:, 0], q.flip(0)[:, 1], indexing="xy")
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)
    caption = f"grid over the marginal quantiles {p[0]:.3f}..{p[-1]:.3f} of {prior.describe()} (estimated from draws)"
    return z.to(device=device, dtype=dtype or torch.float32), caption


def save_comparison(groups, originals, strips, image_shape, path, title=None, value_range=(0.0, 1.0)):
    """The picture of a likelihood comparison (``comparison.png``).

    :param groups: ``[(label, [(family, bits_per_dim, std), ...]), ...]``: one colour per group of
        families scored on the same data; bars with error bars (std over seeds).
    :param originals: ``(n, D)`` test images shown above the reconstructions.
    :param strips: ``[(family, samples (n, D), reconstructions (n, D)), ...]``: one row per family.
    """
    n = len(originals)
    shape = tuple(image_shape) if len(image_shape) == 3 else (1,) + tuple(image_shape)

    def images(x):
        return (x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=torch.float32)).reshape(-1, *shape)

    if value_range is None:
        everything = torch.cat([images(originals)] + [images(a) for _, s, r in strips for a in (s, r)])
        value_range = (everything.min().item(), everything.max().item())
    lo, hi = value_range

    def row(left, right):
        # the blanks (no samples for the test images, one gap) are white: the top of the value range
        blank = torch.full((1, *shape), float(hi))
        left = blank.expand(n, *shape) if left is None else images(left)
        return image_grid(torch.cat([left, blank, images(right)]), shape, nrow=2 * n + 1, padding=1,
                          value_range=value_range)  # fmt: skip

    mosaics = [("test images", row(None, originals))] + [(f, row(s, r)) for f, s, r in strips]
    # layout in inches, top to bottom: title, bars, tick labels, strip headers, one strip per row
    width, left, right = 10.0, 1.7, 0.3
    inner = width - left - right
    mosaic_h, mosaic_w = mosaics[0][1].shape[:2]
    strip = inner * mosaic_h / mosaic_w
    gap = 0.12
    top, bar, tick_space, header = 0.45, 3.0, 1.0, 0.3
    height = top + bar + tick_space + header + len(mosaics) * (strip + gap) + 0.1
    fig = plt.figure(figsize=(width, height), dpi=110)

    def axes(y_from_top, h):
        return fig.add_axes([left / width, 1 - (y_from_top + h) / height, inner / width, h / height])

    ax = axes(top, bar)
    colors = plt.get_cmap("tab10").colors
    x, ticks, labels = 0.0, [], []
    for g, (label, bars) in enumerate(groups):
        xs = [x + i for i in range(len(bars))]
        values = [b[1] for b in bars]
        errors = [b[2] or 0.0 for b in bars]
        ax.bar(xs, values, yerr=errors, capsize=4, color=colors[g % 10], alpha=0.85, label=label)
        for xi, v, e in zip(xs, values, errors):
            ax.annotate(f"{v:.3f}", (xi, v + e), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                        textcoords="offset points")  # fmt: skip
        ticks += xs
        labels += [b[0] for b in bars]
        x += len(bars) + 0.8
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test bits/dim (lower is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", title="scored on (not ranked across groups)", title_fontsize=7)
    ax.margins(y=0.15)
    if title:
        ax.set_title(title, fontsize=10)
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    y = top + bar + tick_space + header
    for i, (label, mosaic) in enumerate(mosaics):
        sub = axes(y, strip)
        y += strip + gap
        sub.imshow(mosaic, cmap=cmap if mosaic.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest",
                   aspect="auto")  # fmt: skip
        sub.set_axis_off()
        sub.text(-0.01, 0.5, label, transform=sub.transAxes, ha="right", va="center", fontsize=9)
        if i == 0:
            for x, text in ((0.25, "samples from the prior (decoder means)"), (0.75, "reconstructions of the test images")):
                sub.text(x, 1.04, text, transform=sub.transAxes, ha="center", va="bottom", fontsize=9)
    fig.savefig(path)
    plt.close(fig)


# Latent-space pictures and the Pareto chart -------------------------------------------------------


def image_grid(images, image_shape, nrow, padding=1, pad_value=1.0, value_range=(0.0, 1.0)):
    """Rows of ``images`` (``(N, D)``, or ``(N, *image_shape)``) tiled by :func:`torchvision.utils.make_grid`.

    :param image_shape: ``(H, W)`` (grayscale) or ``(C, H, W)``: ``C`` 1 or 3 (4: RGB shown, alpha
        dropped; other counts: the first channel).
    :param int nrow: images per row of the grid.
    :param value_range: ``(lo, hi)`` mapped to [0, 1] and clipped; ``None``: the data's own min and max.
    :returns: NumPy ``(H', W')`` for grayscale, ``(H', W', 3)`` for colour, values in [0, 1].
    """
    from torchvision.utils import make_grid

    x = images.detach().float().cpu() if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images), dtype=torch.float32)
    shape = tuple(image_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (H, W) or (C, H, W), got {tuple(image_shape)}")
    x = x.reshape(-1, *shape)
    if shape[0] not in (1, 3):  # RGBA: the colours without alpha; any other count: the first channel
        x = x[:, :3] if shape[0] == 4 else x[:, :1]
        shape = tuple(x.shape[1:])
    lo, hi = value_range if value_range is not None else (x.min().item(), x.max().item())
    x = ((x - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    grid = make_grid(x, nrow=nrow, padding=padding, pad_value=pad_value)  # (3, H', W') (1 channel is repeated)
    return grid[0].numpy() if shape[0] == 1 else grid.permute(1, 2, 0).numpy()


def save_image_rows(rows, image_shape, path, row_labels=None, title=None, value_range=(0.0, 1.0)):
    """Save ``rows`` (``(R, S, D)``: R rows of S images, e.g. traversals or interpolations) as one PNG,
    with an optional label left of each row (e.g. ``"z3  KL 1.25"``) and a title."""
    rows = np.asarray(rows.detach().cpu() if isinstance(rows, torch.Tensor) else rows)
    r, s = rows.shape[:2]
    grid = image_grid(rows.reshape(r * s, -1), image_shape, nrow=s, padding=1, value_range=value_range)
    height, width = grid.shape[:2]
    k = int(np.clip(np.ceil(600 / width), 1, 8))
    label_w = max(90, 7 * max(len(text) for text in row_labels)) if row_labels else 0  # ~7 px a character at 8 pt
    title_h = 14 + 16 * (title.count("\n") + 1) if title else 0
    fig_w, fig_h = width * k + label_w, height * k + title_h
    fig = plt.figure(figsize=(fig_w / 100, fig_h / 100), dpi=100)
    ax = fig.add_axes([label_w / fig_w, 0, width * k / fig_w, height * k / fig_h])
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if row_labels:
        for i, text in enumerate(row_labels):
            y = 1 - (i + 0.5) / r
            ax.text(-0.01, y, text, transform=ax.transAxes, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    fig.savefig(path)
    plt.close(fig)


def save_scatter(coords, labels, path, axis_labels=("z0", "z1"), title=None, max_classes=20):
    """A scatter of ``coords`` (``(N, 2)``) coloured by ``labels`` (``(N,)`` or None) as a PNG.

    At most ``max_classes`` distinct integer or string labels: one colour each and a legend;
    otherwise numeric labels are shown on a continuous colour map with a colour bar.
    """
    coords = np.asarray(coords, dtype=np.float64)
    n = coords.shape[0]
    size = float(np.clip(3000 / max(n, 1), 2, 30))
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=100)
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=size, alpha=0.7, linewidths=0)
    else:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        categorical = labels.dtype.kind in "iubUSO" and len(classes) <= max_classes
        if categorical:
            cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
            for c, value in enumerate(classes):
                m = labels == value
                ax.scatter(coords[m, 0], coords[m, 1], s=size, alpha=0.7, linewidths=0, color=cmap(c % cmap.N),
                           label=str(value))  # fmt: skip
            ax.legend(fontsize=7, markerscale=max(1.0, 20 / size) ** 0.5, loc="best", title="label", title_fontsize=7)
        else:
            sc = ax.scatter(coords[:, 0], coords[:, 1], c=labels.astype(np.float64), s=size, alpha=0.7,
                            linewidths=0, cmap="viridis")  # fmt: skip
            fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _mean_std(values):
    v = np.atleast_1d(np.asarray(values, dtype=np.float64))
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else 0.0)


def pareto_front(seconds, scores):
    """Indices of the points on the Pareto front of (less training time, higher score), by increasing time.

    A point is on the front when no other point has ``seconds <=`` and ``score >=`` with one of
    them strict. ``seconds``, ``scores``: sequences of means, one per configuration.
    """
    seconds, scores = np.asarray(seconds, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    front = []
    for i in range(len(seconds)):
        dominated = any(
            seconds[j] <= seconds[i] and scores[j] >= scores[i] and (seconds[j] < seconds[i] or scores[j] > scores[i])
            for j in range(len(seconds))
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (seconds[i], -scores[i]))


def save_pareto(points, path, title=None, xlabel="training time (s)", ylabel="test log p(x) (nats per item)"):
    """The Pareto chart of a comparison: score against training seconds, one point per configuration.

    Points are means over seeds with error bars of one standard deviation over seeds (ddof 1; none
    for one seed). The Pareto front (:func:`pareto_front`: nothing is both faster and better) is
    drawn as a step line and its points are filled; the others are hollow. The time axis is
    logarithmic when the times span more than a factor of 20.

    :param points: ``[{"label": str, "seconds": [s per seed], "score": [score per seed]}, ...]``
        (scalars allowed for one seed); higher scores are better (e.g. IS :math:`\\log p(x)`, nats).
    :returns: the labels of the points on the front.
    """
    if not points:
        raise ValueError("save_pareto needs at least one point")
    stats = [(p["label"],) + _mean_std(p["seconds"]) + _mean_std(p["score"]) for p in points]
    labels = [s[0] for s in stats]
    sx, ex, sy, ey = (np.array([s[i] for s in stats]) for i in (1, 2, 3, 4))
    front = pareto_front(sx, sy)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    colors = plt.get_cmap("tab10").colors
    for i, label in enumerate(labels):
        on = i in front
        ax.errorbar(sx[i], sy[i], xerr=ex[i], yerr=ey[i], fmt="o", ms=7, capsize=3, color=colors[i % 10],
                    mfc=colors[i % 10] if on else "white", mew=1.5, zorder=3)  # fmt: skip
        ax.annotate(label, (sx[i], sy[i]), xytext=(6, 6), textcoords="offset points", fontsize=8,
                    fontweight="bold" if on else "normal")  # fmt: skip
    fx, fy = sx[front], sy[front]
    if len(front) > 1:
        ax.step(fx, fy, where="post", color="black", alpha=0.6, lw=1.2, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", lw=1.0, zorder=4,
               label="on the front" if len(front) <= 1 else None)  # fmt: skip
    if sx.min() > 0 and sx.max() / sx.min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + " (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.margins(0.12)
    ax.set_title(title or "score against training time (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return [labels[i] for i in front]
