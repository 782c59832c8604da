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
    """Save rows of ``x`` (shape ``(N, D)``) as a grid of grayscale images.

    Values are shown on ``value_range`` (clipped); ``None`` uses the data's own min and max.
    """
    images = _to_images(x, image_shape)
    ncol = ncol or int(np.ceil(np.sqrt(len(images))))
    grid = tile(images, ncol)
    lo, hi = value_range if value_range is not None else (np.nanmin(grid), np.nanmax(grid))
    height, width = grid.shape
    k = int(np.clip(np.ceil(600 / width), 1, 8))  # whole screen pixels per image pixel: crisp, small files
    title_h = 30 if title else 0
    fig = plt.figure(figsize=(width * k / 100, (height * k + title_h) / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, height * k / (height * k + title_h)])
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    fig.savefig(path)
    plt.close(fig)


def save_curves(metrics, path, title=None):
    """Train and test ELBO (nats per datapoint) by epoch."""
    epochs = [m["epoch"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [m["train_elbo"] for m in metrics], "o-", ms=3, label="train ELBO")
    ax.plot(epochs, [m["test_elbo"] for m in metrics], "s-", ms=3, label="test ELBO")
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


def save_comparison(groups, originals, strips, image_shape, path, title=None, value_range=(0.0, 1.0)):
    """The picture of a likelihood comparison (``comparison.png``).

    :param groups: ``[(label, [(family, bits_per_dim, std), ...]), ...]``: one colour per group of
        families scored on the same data; bars with error bars (std over seeds).
    :param originals: ``(n, D)`` test images shown above the reconstructions.
    :param strips: ``[(family, samples (n, D), reconstructions (n, D)), ...]``: one row per family.
    """
    n = len(originals)
    h, w = image_shape
    blank = np.full((n, h, w), np.nan)

    def images(x):
        a = _to_images(x, image_shape)
        return np.clip(a, *value_range) if value_range else a

    def row(left, right):
        left = blank if left is None else images(left)
        return tile(np.concatenate([left, np.full((1, h, w), np.nan), images(right)]), 2 * n + 1)

    mosaics = [("test images", row(None, originals))] + [(f, row(s, r)) for f, s, r in strips]
    # layout in inches, top to bottom: title, bars, tick labels, strip headers, one strip per row
    width, left, right = 10.0, 1.7, 0.3
    inner = width - left - right
    mosaic_h, mosaic_w = mosaics[0][1].shape
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
        lo, hi = value_range if value_range else (np.nanmin(mosaic), np.nanmax(mosaic))
        sub.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest", aspect="auto")
        sub.set_axis_off()
        sub.text(-0.01, 0.5, label, transform=sub.transAxes, ha="right", va="center", fontsize=9)
        if i == 0:
            for x, text in ((0.25, "samples from the prior (decoder means)"), (0.75, "reconstructions of the test images")):
                sub.text(x, 1.04, text, transform=sub.transAxes, ha="center", va="bottom", fontsize=9)
    fig.savefig(path)
    plt.close(fig)
