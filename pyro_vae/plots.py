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
