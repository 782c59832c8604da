"""Latent tools (pyro_vae.runs.latent) and their pictures, on small untrained VAEs: numbers against independent computations."""

import math

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyro_vae.errors import UserError
from pyro_vae.runs import latent, plots
from pyro_vae.vae.guides import DiagonalGuide
from pyro_vae.vae.model import VAE

D, Z = 64, 3


def make_vae(guide="diagonal", z=Z, seed=0, **kw):
    torch.manual_seed(seed)
    return VAE(D, z, hidden=(16,), activation="tanh", guide=guide, **kw).eval()


def data(n=20, seed=1):
    return torch.rand(n, D, generator=torch.Generator().manual_seed(seed))


def loc_scale(vae, x):
    """The diagonal guide's loc and scale, computed from its net directly."""
    with torch.no_grad():
        out = vae.encoder.net(x)
    loc, raw = out[:, :Z], out[:, Z:]
    return loc.numpy(), (F.softplus(raw) + DiagonalGuide.MIN_SCALE).numpy()


class FlatteningGuide(DiagonalGuide):
    """Takes items of any shape (B, *item_shape) and flattens them: stands in for a convolutional encoder."""

    def forward(self, x):
        return super().forward(x.reshape(x.shape[0], -1))


# encode ------------------------------------------------------------------------------------------


def test_encode_mean_and_scale_are_the_guides_loc_and_scale():
    vae, x = make_vae(), data()
    loc, scale = loc_scale(vae, x)
    np.testing.assert_allclose(latent.encode(vae, x, "mean"), loc, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(latent.encode(vae, x, "scale"), scale, rtol=1e-5, atol=1e-7)
    # batching does not change the closed-form means; NumPy input is accepted
    np.testing.assert_allclose(latent.encode(vae, x.numpy(), "mean", batch_size=7), loc, rtol=1e-6, atol=1e-7)


def test_encode_samples_shapes_moments_determinism_and_rng():
    vae, x = make_vae(), data(4)
    loc, scale = loc_scale(vae, x)
    before = torch.get_rng_state()
    z = latent.encode(vae, x, "samples", samples=4000, seed=3)
    assert torch.equal(torch.get_rng_state(), before)  # the global random state is untouched
    assert z.shape == (4, 4000, Z)
    # empirical mean within 5 standard errors of loc, std within 5% of scale
    assert np.all(np.abs(z.mean(1) - loc) < 5 * scale / math.sqrt(4000))
    np.testing.assert_allclose(z.std(1, ddof=1), scale, rtol=0.05)
    np.testing.assert_array_equal(latent.encode(vae, x, "samples", samples=5, seed=3),
                                  latent.encode(vae, x, "samples", samples=5, seed=3))  # fmt: skip
    assert not np.array_equal(latent.encode(vae, x, "samples", samples=5, seed=3),
                              latent.encode(vae, x, "samples", samples=5, seed=4))  # fmt: skip
    assert latent.encode(vae, x, "samples").shape == (4, 1, Z)


def test_encode_accepts_any_item_shape_the_encoder_takes():
    vae, x = make_vae(FlatteningGuide), data(6)
    np.testing.assert_allclose(latent.encode(vae, x.reshape(6, 8, 8)), latent.encode(vae, x), rtol=1e-6)
    out = latent.reconstruct(vae, x.reshape(6, 8, 8))
    np.testing.assert_allclose(out, vae.decode(torch.as_tensor(latent.encode(vae, x))).numpy(), rtol=1e-6)


def test_encode_flow_guide_uses_a_monte_carlo_mean():
    vae, x = make_vae("iaf"), data(3)
    m = latent.encode(vae, x, "mean", samples=2000, seed=0)
    s = latent.encode(vae, x, "scale", samples=2000, seed=0)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(123)  # independent draws
        draws = vae.encoder(x).sample((4000,)).numpy()
    assert np.all(np.abs(m - draws.mean(0)) < 5 * draws.std(0) * math.sqrt(1 / 2000 + 1 / 4000))
    np.testing.assert_allclose(s, draws.std(0, ddof=1), rtol=0.1)


def test_encode_refuses_bad_requests():
    vae, x = make_vae(), data(3)
    with pytest.raises(UserError, match="unknown latent quantity"):
        latent.encode(vae, x, "median")
    with pytest.raises(UserError, match="samples"):
        latent.encode(vae, x, "samples", samples=0)


# saving codes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["npy", "csv"])
def test_save_codes_round_trip_with_labels(tmp_path, ext):
    codes = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    labels = np.arange(7) % 3
    path = tmp_path / f"z.{ext}"
    latent.save_codes(path, codes, labels)
    back, back_labels = latent.load_codes(path)
    np.testing.assert_array_equal(back.astype(np.float32), codes)  # float32 values survive the CSV exactly
    np.testing.assert_array_equal(back_labels, labels)
    if ext == "csv":
        assert path.read_text().splitlines()[0] == "z0,z1,z2,label"
    else:
        assert (tmp_path / "z.labels.npy").exists()
    latent.save_codes(tmp_path / f"nolabels.{ext}", codes)
    assert latent.load_codes(tmp_path / f"nolabels.{ext}")[1] is None


def test_save_codes_refusals(tmp_path):
    codes = np.zeros((4, 2))
    with pytest.raises(UserError, match=r"\.npy or \.csv"):
        latent.save_codes(tmp_path / "z.txt", codes)
    with pytest.raises(UserError, match="need a .npy"):
        latent.save_codes(tmp_path / "z.csv", np.zeros((4, 5, 2)))
    with pytest.raises(UserError, match="one per item"):
        latent.save_codes(tmp_path / "z.npy", codes, labels=[1, 2])
    latent.save_codes(tmp_path / "s.npy", np.zeros((4, 5, 2)))
    assert np.load(tmp_path / "s.npy").shape == (4, 5, 2)


@pytest.mark.parametrize("kind", ["int", "str"])
def test_labels_file_as_a_column_is_one_label_per_item(tmp_path, kind):
    labels = np.array([3, 1, 4, 1, 5]) if kind == "int" else np.array(["cat", "dog", "cat", "ant", "dog"])
    np.save(tmp_path / "col.npy", labels.reshape(-1, 1))
    got = latent.read_labels(tmp_path / "col.npy", 5)
    assert got.shape == (5,) and got.tolist() == labels.tolist()
    latent.save_codes(tmp_path / "z.npy", np.zeros((5, 2)), labels=labels.reshape(-1, 1))
    assert latent.load_codes(tmp_path / "z.npy")[1].tolist() == labels.tolist()
    for bad in [(5, 2), (1, 5), (4, 1)]:
        np.save(tmp_path / "bad.npy", np.zeros(bad, np.int64))
        with pytest.raises(UserError, match=rf"bad.npy holds labels of shape \({bad[0]}, {bad[1]}\) for 5 items; .*"
                                            r"\(5,\) or \(5, 1\)"):  # fmt: skip
            latent.read_labels(tmp_path / "bad.npy", 5)


# interpolation -----------------------------------------------------------------------------------


def test_slerp_endpoints_angles_and_norms():
    rng = np.random.default_rng(0)
    z0, z1 = rng.normal(size=5), 2.5 * rng.normal(size=5)
    t = np.linspace(0, 1, 11)
    path = latent.slerp(z0, z1, t)
    np.testing.assert_allclose(path[0], z0, atol=1e-12)
    np.testing.assert_allclose(path[-1], z1, atol=1e-12)
    cos = z0 @ z1 / (np.linalg.norm(z0) * np.linalg.norm(z1))
    omega = math.acos(cos)

    def angle(u, v):
        return math.acos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1, 1))

    # norms: |a z0 + b z1|^2 = a^2 |z0|^2 + b^2 |z1|^2 + 2ab z0.z1 with a, b the slerp weights
    a, b = np.sin((1 - t) * omega) / np.sin(omega), np.sin(t * omega) / np.sin(omega)
    want = np.sqrt(a**2 * (z0 @ z0) + b**2 * (z1 @ z1) + 2 * a * b * (z0 @ z1))
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), want, rtol=1e-12)
    # for codes of equal norm the norm is constant along the path (unlike the straight line)
    u1 = z1 / np.linalg.norm(z1) * np.linalg.norm(z0)
    on_sphere = latent.slerp(z0, u1, t)
    np.testing.assert_allclose(np.linalg.norm(on_sphere, axis=1), np.linalg.norm(z0), rtol=1e-12)
    # ... and it is the great-circle arc at constant angular speed: angle t * Omega from z0
    for ti, p in zip(t, on_sphere):
        assert angle(z0, p) == pytest.approx(ti * omega, abs=1e-7)
    # parallel codes: the straight line
    np.testing.assert_allclose(latent.slerp(z0, 2 * z0, t), (1 - t[:, None]) * z0 + t[:, None] * 2 * z0)


@pytest.mark.parametrize("use_slerp", [False, True])
def test_interpolate_decodes_the_path_between_posterior_means(use_slerp):
    vae, x = make_vae(), data(2)
    loc, _ = loc_scale(vae, x)
    codes, images = latent.interpolate(vae, x[0], x[1], steps=6, slerp=use_slerp)
    assert codes.shape == (6, Z) and images.shape == (6, D)
    np.testing.assert_allclose(codes[0], loc[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(codes[-1], loc[1], rtol=1e-6, atol=1e-7)
    if not use_slerp:
        np.testing.assert_allclose(codes[2], loc[0] + 0.4 * (loc[1] - loc[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(images, vae.decode(torch.as_tensor(codes)).numpy(), rtol=1e-6)
    with pytest.raises(UserError, match="at least 2 steps"):
        latent.interpolate(vae, x[0], x[1], steps=1)


# traversals --------------------------------------------------------------------------------------


def test_unit_kl_and_traverse_order_match_an_independent_kl():
    vae, x = make_vae(z=4), data(30)
    with torch.no_grad():
        out = vae.encoder.net(x)
    loc, scale = out[:, :4], F.softplus(out[:, 4:]) + DiagonalGuide.MIN_SCALE
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0))
    want = kl.mean(0).double().numpy()
    np.testing.assert_allclose(latent.unit_kl(vae, x, batch_size=7), want, rtol=1e-5)
    units, images = latent.traverse(vae, x[0], data=x, span=2.0, steps=5)
    np.testing.assert_array_equal(units, np.argsort(-want))
    assert images.shape == (4, 5, D)
    # row r varies unit units[r] over [-2, 2]; the others stay at the posterior mean of x[0]
    base = loc[0].numpy()
    for r, j in enumerate(units):
        z = np.repeat(base[None], 5, 0)
        z[:, j] = np.linspace(-2, 2, 5)
        np.testing.assert_allclose(images[r], vae.decode(torch.as_tensor(z)).numpy(), rtol=1e-5, atol=1e-6)
    # explicit units keep the user's order; top keeps the first units; no item: the prior's mean
    u, im = latent.traverse(vae, None, units=[2, 0], steps=3)
    np.testing.assert_array_equal(u, [2, 0])
    z = np.zeros((3, 4), dtype=np.float32)
    z[:, 2] = [-3, 0, 3]
    np.testing.assert_allclose(im[0], vae.decode(torch.as_tensor(z)).numpy(), rtol=1e-6)
    assert len(latent.traverse(vae, None, data=x, top=2)[0]) == 2
    with pytest.raises(UserError, match="out of range"):
        latent.traverse(vae, None, units=[4])


def test_unit_kl_full_rank_uses_the_marginal_variances():
    vae, x = make_vae("full-rank"), data(10)
    with torch.no_grad():
        q = vae.encoder(x)
        m, v = q.loc, q.covariance_matrix.diagonal(dim1=-2, dim2=-1)
    want = (0.5 * (m**2 + v - 1 - v.log())).mean(0).double().numpy()
    np.testing.assert_allclose(latent.unit_kl(vae, x), want, rtol=1e-5)


# pictures ----------------------------------------------------------------------------------------


def png_std(path):
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= 40
    return float(img[..., :3].std())


@pytest.mark.parametrize("z,method,want", [(2, "auto", "plane"), (5, "auto", "pca"), (5, "tsne", "tsne"), (1, "pca", "line")])
def test_latent_scatter_writes_a_png(tmp_path, z, method, want):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    codes = rng.normal(size=(60, z)) + labels[:, None]
    coords, used = latent.latent_scatter(codes, labels, tmp_path / "l.png", method=method,
                                         tsne_options={"max_iter": 250})  # fmt: skip
    assert used == want and coords.shape == (60, 2)
    if want == "plane":
        np.testing.assert_array_equal(coords, codes)
    if want == "pca":  # independent PCA: projections on the top two right singular vectors, up to sign
        c = codes - codes.mean(0)
        proj = c @ np.linalg.svd(c, full_matrices=False)[2][:2].T
        np.testing.assert_allclose(np.abs(coords), np.abs(proj), rtol=1e-6, atol=1e-9)
    assert png_std(tmp_path / "l.png") > 0.05
    # continuous labels and no labels
    latent.latent_scatter(codes, rng.normal(size=60), tmp_path / "c.png", method="pca")
    latent.latent_scatter(codes, None, tmp_path / "n.png", method="pca")
    assert png_std(tmp_path / "c.png") > 0.05 and png_std(tmp_path / "n.png") > 0.02
    with pytest.raises(UserError, match="unknown projection"):
        latent.latent_scatter(codes, labels, tmp_path / "x.png", method="umap")


def test_image_grid_and_rows(tmp_path):
    x = np.random.default_rng(0).uniform(size=(6, 12))
    grid = plots.image_grid(x, (3, 4), nrow=3, padding=1)
    assert grid.shape == (2 * 4 + 1, 3 * 5 + 1)  # make_grid: padding around and between images
    np.testing.assert_allclose(grid[1:4, 1:5], x[0].reshape(3, 4), rtol=1e-6)
    np.testing.assert_allclose(grid[5:8, 11:15], x[5].reshape(3, 4), rtol=1e-6)
    colour = plots.image_grid(np.random.default_rng(1).uniform(size=(4, 3 * 2 * 2)), (3, 2, 2), nrow=2)
    assert colour.shape == (7, 7, 3)
    vae = make_vae()
    units, images = latent.traverse(vae, None, steps=5)
    plots.save_image_rows(images, (8, 8), tmp_path / "t.png", row_labels=[f"z{u}" for u in units], title="traversal")
    assert png_std(tmp_path / "t.png") > 0.05


def test_pareto_front_and_chart(tmp_path):
    seconds = [10, 20, 15, 40, 5]
    scores = [-100, -95, -101, -94, -110]
    # independent: sort by time, keep the points better than everything faster
    order = sorted(range(5), key=lambda i: seconds[i])
    best, want = -math.inf, []
    for i in order:
        if scores[i] > best:
            want.append(i)
            best = scores[i]
    assert plots.pareto_front(seconds, scores) == want == [4, 0, 1, 3]
    points = [{"label": f"c{i}", "seconds": [s, s * 1.1, s * 0.9], "score": [v, v + 0.5, v - 0.5]}
              for i, (s, v) in enumerate(zip(seconds, scores))]  # fmt: skip
    front = plots.save_pareto(points, tmp_path / "p.png")
    assert front == ["c4", "c0", "c1", "c3"]
    assert png_std(tmp_path / "p.png") > 0.05


def test_unit_kl_flow_guide_is_the_moment_matched_monte_carlo_value():
    vae, x = make_vae("planar"), data(4)
    got = latent.unit_kl(vae, x, samples=3000, seed=0)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(99)  # independent draws
        z = vae.encoder(x).sample((6000,)).double()
    m, v = z.mean(0), z.var(0)
    want = (0.5 * (m**2 + v - 1 - v.log())).mean(0).numpy()
    np.testing.assert_allclose(got, want, rtol=0.1, atol=0.01)
    units, images = latent.traverse(vae, x[0], data=x, steps=3, samples=500)
    assert sorted(units) == list(range(Z)) and images.shape == (Z, 3, D)


def test_on_a_trained_run(tmp_path):
    """The tools on a model trained for one epoch on scikit-learn's digits (8x8)."""
    from pyro_vae import fit

    run = fit(dataset="digits", epochs=1, z_dim=2, hidden="32", batch_size=64, out=tmp_path / "run", quiet=True)
    x = run.test_data()
    z = latent.encode(run.vae, x)
    assert z.shape == (x.shape[0], 2) and np.isfinite(z).all()
    codes, images = latent.interpolate(run.vae, x[0], x[1], steps=8, slerp=True)
    units, rows = latent.traverse(run.vae, x[0], data=x, steps=7)
    plots.save_image_rows(images[None], run.image_shape, tmp_path / "i.png")
    plots.save_image_rows(rows, run.image_shape, tmp_path / "t.png", row_labels=[f"z{u}" for u in units])
    latent.latent_scatter(z, np.arange(len(z)) % 10, tmp_path / "l.png")
    recon = latent.reconstruct(run.vae, x[:16])
    plots.save_image_rows(np.stack([x[:16].flatten(1).numpy(), recon]), run.image_shape, tmp_path / "r.png")
    for name in "itlr":
        assert png_std(tmp_path / f"{name}.png") > 0.02
