"""Latent tools (pyro_vae.runs.latent) and their pictures, on small untrained VAEs: numbers against independent computations."""

import math

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_user_error, run_cli

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


@pytest.mark.parametrize(
    "z,method,want", [(2, "auto", "plane"), (5, "auto", "pca"), (5, "tsne", "tsne"), (1, "pca", "line")]
)
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
    # the labels options of runs with labels are refused on a plain run, with one line each
    with pytest.raises(UserError, match="runs with labels"):
        run.reconstruct(x[:2], labels=[0, 1])
    with pytest.raises(UserError, match="runs with labels"):
        run.encode(x[:2], labels=[0, 1])
    with pytest.raises(UserError, match="--label applies"):
        run.traverse(label=1)
    with pytest.raises(UserError, match="--labels applies to interpolate"):
        run.interpolate(0, 1, labels=np.zeros(len(x)))
    with pytest.raises(UserError, match="--use-classifier applies"):
        run.latents(tmp_path / "u.png", use_classifier=True)


# models with labels (pyro_vae.vae.labels): q(z | x, y) and E[x | z, y] ---------------------------------------

C = 4


def make_labelled(kind="conditional", seed=0):
    from pyro_vae.vae.labels import ConditionalVAE, SemiSupervisedVAE

    torch.manual_seed(seed)
    cls = ConditionalVAE if kind == "conditional" else SemiSupervisedVAE
    return cls(D, C, z_dim=Z, hidden=(16,), activation="tanh").eval()


def labelled_loc_scale(vae, x, y):
    """q(z | x, y)'s loc and scale from the guide's net on (x, onehot(y)), computed directly."""
    with torch.no_grad():
        out = vae.encoder.net(torch.cat([x, F.one_hot(torch.as_tensor(y, device=x.device), C).float()], -1)).cpu()
    return out[:, :Z].numpy(), (F.softplus(out[:, Z:]) + DiagonalGuide.MIN_SCALE).numpy()


def labelled_decode(vae, z, y):
    """E[x | z, y] = sigmoid(decoder(z, onehot(y))), computed directly; y broadcast against z's rows."""
    device = next(vae.parameters()).device
    z = torch.as_tensor(z, dtype=torch.float32, device=device)
    y = torch.as_tensor(y, device=device).expand(z.shape[:-1])
    with torch.no_grad():
        return torch.sigmoid(vae.decoder(torch.cat([z, F.one_hot(y, C).float()], -1))).cpu().numpy()


def test_labelled_encode_is_the_guides_loc_and_scale_with_the_one_hot_label(device):
    vae, x = make_labelled().to(device), data(10).to(device)
    y = np.arange(10) % C
    loc, scale = labelled_loc_scale(vae, x, y)
    np.testing.assert_allclose(latent.encode(vae, x, "mean", labels=y), loc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(latent.encode(vae, x, "scale", labels=y, batch_size=3), scale, rtol=1e-5, atol=1e-6)
    # another label gives another code: the label is used
    assert not np.allclose(latent.encode(vae, x, "mean", labels=(y + 1) % C), loc, atol=1e-3)
    z = latent.encode(vae, x[:2], "samples", samples=3000, seed=1, labels=y[:2])
    assert z.shape == (2, 3000, Z)
    assert np.all(np.abs(z.mean(1) - loc[:2]) < 5 * scale[:2] / math.sqrt(3000))
    # reconstruct: E[x | z, y] at the posterior mean, decoded with the item's own label
    np.testing.assert_allclose(latent.reconstruct(vae, x, labels=y), labelled_decode(vae, loc, y), rtol=1e-5, atol=1e-6)
    # the per-unit KL of q(z_j | x, y) against N(0, 1), by hand
    kl = (0.5 * (loc**2 + scale**2 - 1 - np.log(scale**2))).mean(0)
    np.testing.assert_allclose(latent.unit_kl(vae, x, labels=y), kl, rtol=1e-5)


def test_labelled_refusals():
    vae, x = make_labelled(), data(5)
    with pytest.raises(UserError, match="--conditional model needs the items' labels"):
        latent.encode(vae, x)
    with pytest.raises(UserError, match=r"0\.\.3; got values from 0 to 4"):
        latent.encode(vae, x, labels=[0, 1, 2, 3, 4])
    with pytest.raises(UserError, match=r"one label per item, shape \(5,\)"):
        latent.encode(vae, x, labels=[0, 1])
    with pytest.raises(UserError, match="class indices"):
        latent.encode(vae, x, labels=np.array(list("abcde")))
    with pytest.raises(UserError, match="give the class of each code"):
        latent.decode(vae, np.zeros((2, Z)))
    plain = make_vae()
    with pytest.raises(UserError, match="runs with labels"):
        latent.encode(plain, x, labels=[0] * 5)
    with pytest.raises(UserError, match="--label applies"):
        latent.traverse(plain, label=1)


def test_semi_supervised_default_label_is_the_classifiers_argmax(device):
    vae, x = make_labelled("semi").to(device), data(40).to(device)
    with torch.no_grad():
        predicted = vae.classifier.net(x).argmax(-1).cpu().numpy()  # independent: the classifier's MLP's logits
    assert len(set(predicted.tolist())) > 1  # a test that can tell labels apart
    np.testing.assert_array_equal(latent.guide_labels(vae, x, batch_size=7).cpu().numpy(), predicted)
    loc, _ = labelled_loc_scale(vae, x, predicted)
    np.testing.assert_allclose(latent.encode(vae, x), loc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(latent.reconstruct(vae, x), labelled_decode(vae, loc, predicted), rtol=1e-5, atol=1e-6)
    # given labels win over the classifier
    given = (predicted + 1) % C
    np.testing.assert_allclose(latent.encode(vae, x, labels=given), labelled_loc_scale(vae, x, given)[0], rtol=1e-5,
                               atol=1e-6)  # fmt: skip


def test_labelled_traverse_varies_only_the_chosen_unit_and_decodes_with_the_class():
    vae, x = make_labelled(), data(8)
    values = np.linspace(-2.0, 2.0, 5)
    units, images = latent.traverse(vae, units=[2, 0], span=2.0, steps=5, label=3)
    assert list(units) == [2, 0] and images.shape == (2, 5, D)
    for r, j in enumerate([2, 0]):
        codes = np.zeros((5, Z), dtype=np.float32)
        codes[:, j] = values  # the prior mean 0, unit j alone varied
        np.testing.assert_allclose(images[r], labelled_decode(vae, codes, 3), rtol=1e-5, atol=1e-6)
    # without a label and without an item: every class, one block of C rows per unit
    units, every = latent.traverse(vae, units=[1], span=2.0, steps=5)
    assert every.shape == (1, C, 5, D)
    codes = np.zeros((5, Z), dtype=np.float32)
    codes[:, 1] = values
    for c in range(C):
        np.testing.assert_allclose(every[0, c], labelled_decode(vae, codes, c), rtol=1e-5, atol=1e-6)
    # from an item: its posterior mean under its own label, decoded with that label by default
    loc, _ = labelled_loc_scale(vae, x[:1], [2])
    units, item = latent.traverse(vae, x[0], units=[1], span=2.0, steps=5, x_label=2)
    codes = np.repeat(loc, 5, 0)
    codes[:, 1] = values
    assert item.shape == (1, 5, D)
    np.testing.assert_allclose(item[0], labelled_decode(vae, codes, 2), rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match=r"--label must be class indices 0\.\.3"):
        latent.traverse(vae, units=[0], label=C)
    # the KL order is that of q(z | x, y) over the data with its labels
    y = np.arange(8) % C
    units, _ = latent.traverse(vae, data=x, data_labels=y, steps=2, label=0)
    assert list(units) == list(np.argsort(-latent.unit_kl(vae, x, labels=y), kind="stable"))


def test_labelled_interpolate_encodes_each_end_with_its_label_and_holds_one_class():
    vae, x = make_labelled(), data(2)
    locs, _ = labelled_loc_scale(vae, x, [1, 3])
    codes, images = latent.interpolate(vae, x[0], x[1], steps=4, labels=[1, 3], label=2)
    t = np.linspace(0, 1, 4)[:, None]
    np.testing.assert_allclose(codes, (1 - t) * locs[0] + t * locs[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(images, labelled_decode(vae, codes, 2), rtol=1e-5, atol=1e-6)
    same, _ = labelled_loc_scale(vae, x, [3, 3])
    codes, images = latent.interpolate(vae, x[0], x[1], steps=3, labels=[3, 3])  # their common label
    np.testing.assert_allclose(images, labelled_decode(vae, codes, 3), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(codes[[0, -1]], same, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match=r"different labels \(1 and 3\).*--label"):
        latent.interpolate(vae, x[0], x[1], labels=[1, 3])
    with pytest.raises(UserError, match="--label"):
        latent.interpolate(vae, x[0], x[1], labels=[1, 3], label=-1)


# the latent commands on trained runs with labels, from the CLI and from Python -------------------------------


LABELLED_FIT = dict(dataset="digits", hidden=(32,), z_dim=3, batch_size=128, device="cpu", epochs=1, quiet=True)


@pytest.mark.slow
def test_latent_commands_on_a_conditional_run(tmp_path, capsys):
    from pyro_vae import fit, load_run

    fit(conditional=True, out=tmp_path / "cvae", **LABELLED_FIT)
    run = load_run(tmp_path / "cvae")
    x, y = run.test_data(), run.test_labels
    assert (tmp_path / "cvae" / "latents.png").exists() and png_std(tmp_path / "cvae" / "latents.png") > 0.02
    # encode: the means of q(z | x, y) with the test labels, and those labels beside them
    code, out, err = run_cli(capsys, "encode", tmp_path / "cvae", "-o", tmp_path / "z.npy")
    assert code == 0, err
    assert "y: the labels of the test split" in out
    loc = run.vae.encoder.net(torch.cat([x.flatten(1), F.one_hot(y, 10).float()], -1))[:, :3].detach().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), loc, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.load(tmp_path / "z.labels.npy"), y.numpy())
    np.testing.assert_allclose(run.encode(x[:5], labels=y[:5]).numpy(), loc[:5], rtol=1e-5, atol=1e-5)
    # a data file without labels: the labels must be given (--labels), of the right length and range
    np.save(tmp_path / "items.npy", (x[:6].flatten(1).numpy() * 255).astype(np.uint8))
    message = assert_user_error(run_cli(capsys, "encode", tmp_path / "cvae", "--data", tmp_path / "items.npy", "-o",
                              tmp_path / "d.npy"), "needs the items' labels", "--labels")  # fmt: skip
    with pytest.raises(UserError) as raised:
        run.encode(data=tmp_path / "items.npy")
    assert str(raised.value) == message  # the Python API raises the CLI's message
    np.save(tmp_path / "y6.npy", y[:6].numpy())
    code, out, err = run_cli(capsys, "encode", tmp_path / "cvae", "--data", tmp_path / "items.npy", "--labels",
                          tmp_path / "y6.npy", "-o", tmp_path / "d.csv")  # fmt: skip
    assert code == 0 and "y: --labels y6.npy" in out, err
    np.save(tmp_path / "y5.npy", y[:5].numpy())
    assert_user_error(run_cli(capsys, "encode", tmp_path / "cvae", "--data", tmp_path / "items.npy", "--labels",
                    tmp_path / "y5.npy", "-o", tmp_path / "d.npy"), "y5.npy", "shape (6,)")  # fmt: skip
    np.save(tmp_path / "y10.npy", np.full(6, 10))
    assert_user_error(run_cli(capsys, "reconstruct", tmp_path / "cvae", "--data", tmp_path / "items.npy", "--labels",
                    tmp_path / "y10.npy", "-o", tmp_path / "r.png"), "0..9")  # fmt: skip
    assert_user_error(run_cli(capsys, "encode", tmp_path / "cvae", "--use-classifier", "-o", tmp_path / "c.npy"),
               "--semi-supervised")  # fmt: skip
    # reconstruct, interpolate, traverse and latents
    code, _, err = run_cli(capsys, "reconstruct", tmp_path / "cvae", "-n", "8", "-o", tmp_path / "r.png")
    assert code == 0 and png_std(tmp_path / "r.png") > 0.02, err
    i, j = 0, int(np.nonzero(y.numpy() != y[0].item())[0][0])  # two items of different labels
    assert_user_error(run_cli(capsys, "interpolate", tmp_path / "cvae", "--items", i, j, "-o", tmp_path / "i.png"),
               "different labels", "--label")  # fmt: skip
    code, _, err = run_cli(capsys, "interpolate", tmp_path / "cvae", "--items", i, j, "--label", "3", "-o",
                        tmp_path / "i.png")  # fmt: skip
    assert code == 0 and png_std(tmp_path / "i.png") > 0.02, err
    assert_user_error(run_cli(capsys, "traverse", tmp_path / "cvae", "--label", "10", "-o", tmp_path / "t.png"), "0..9")
    code, out, err = run_cli(capsys, "traverse", tmp_path / "cvae", "--top", "2", "-o", tmp_path / "t.png")
    assert code == 0 and "each with all 10 classes" in out, err
    order, kl, images = run.traverse(top=2, label=4)
    assert images.shape == (2, 9, 64) and list(kl) == sorted(kl, reverse=True)
    code, _, err = run_cli(capsys, "latents", tmp_path / "cvae", "-o", tmp_path / "l.png")
    assert code == 0 and png_std(tmp_path / "l.png") > 0.02, err


@pytest.mark.slow
def test_latent_commands_on_a_semi_supervised_run(tmp_path, capsys):
    from pyro_vae import fit, load_run

    fit(semi_supervised=True, labelled=30, out=tmp_path / "m2", **LABELLED_FIT)
    run = load_run(tmp_path / "m2")
    x, y = run.test_data(), run.test_labels
    assert (tmp_path / "m2" / "latents.png").exists()
    predicted = run.vae.classifier.net(x.flatten(1)).argmax(-1)  # q(y | x)'s most probable class, directly
    code, out, err = run_cli(capsys, "encode", tmp_path / "m2", "--use-classifier", "-o", tmp_path / "z.npy")
    assert code == 0 and "y: the classifier's most probable class" in out, err
    np.testing.assert_array_equal(np.load(tmp_path / "z.labels.npy"), predicted.numpy())
    loc = run.vae.encoder.net(torch.cat([x.flatten(1), F.one_hot(predicted, 10).float()], -1))[:, :3].detach()
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), loc.numpy(), rtol=1e-5, atol=1e-5)
    # by default the data's labels; for items without labels the classifier's class
    code, out, err = run_cli(capsys, "encode", tmp_path / "m2", "-o", tmp_path / "t.npy")
    assert code == 0 and "the labels of the test split" in out
    np.testing.assert_array_equal(np.load(tmp_path / "t.labels.npy"), y.numpy())
    np.testing.assert_allclose(run.encode(x), run.encode(x, labels=predicted), rtol=1e-6)
    np.save(tmp_path / "items.npy", (x.flatten(1).numpy() * 255).astype(np.uint8))
    code, out, err = run_cli(
        capsys, "encode", tmp_path / "m2", "--data", tmp_path / "items.npy", "-o", tmp_path / "d.npy"
    )
    assert code == 0 and "the classifier's most probable class (items.npy has no labels)" in out, err
    np.testing.assert_array_equal(np.load(tmp_path / "d.labels.npy"), predicted.numpy())
    assert_user_error(run_cli(capsys, "encode", tmp_path / "m2", "--use-classifier", "--labels", tmp_path / "t.labels.npy",
                    "-o", tmp_path / "e.npy"), "exclude each other")  # fmt: skip
    for args in (["reconstruct", "-o", tmp_path / "r.png"], ["interpolate", "--items", 0, 1, "--label", 2, "-o",
                 tmp_path / "i.png"], ["traverse", "--item", 0, "-o", tmp_path / "t.png"],
                 ["latents", "--use-classifier", "-o", tmp_path / "l.png"]):  # fmt: skip
        code, _, err = run_cli(capsys, args[0], tmp_path / "m2", *args[1:])
        assert code == 0 and png_std(args[-1]) > 0.02, (args, err)
