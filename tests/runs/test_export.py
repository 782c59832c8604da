"""``pyro-vae export``: safetensors weights, encoder and decoder programs that run without Pyro or
pyro-vae (checked in a fresh interpreter where neither can be imported), and the model card."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_vae import UserError, fit, load_run
from pyro_vae.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
safetensors = pytest.importorskip("safetensors.torch", reason="the export extra (safetensors) is not installed")
TINY = dict(dataset="digits", hidden=(16,), z_dim=2, batch_size=256, device="cpu", quiet=True)

#: runs in a fresh interpreter in which ``import pyro`` and ``import pyro_vae`` fail
WITHOUT_PYRO = """
import sys
sys.modules["pyro"] = None
sys.modules["pyro_vae"] = None
import numpy as np
import torch
from safetensors.torch import load_file

folder = sys.argv[1]
z = torch.from_numpy(np.load(folder + "/z.npy"))
x = torch.from_numpy(np.load(folder + "/x.npy"))
decoder = torch.export.load(folder + "/export/decoder.pt2").module()
encoder = torch.export.load(folder + "/export/encoder.pt2").module()
mean, stddev = encoder(x)
weights = load_file(folder + "/export/model.safetensors")
np.save(folder + "/decoded.npy", decoder(z).detach().numpy())
np.save(folder + "/mean.npy", mean.detach().numpy())
np.save(folder + "/stddev.npy", stddev.detach().numpy())
np.save(folder + "/first_weight.npy", weights[sorted(weights)[0]].numpy())
for name in ("pyro", "pyro_vae"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(name + " was importable")
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    fit(out=folder / "run", epochs=2, **TINY)
    assert main(["export", str(folder / "run"), "-o", str(folder / "export"), "--eval-samples", "20"]) == 0
    return folder


def test_programs_and_weights_match_the_run_without_pyro(exported):
    run = load_run(exported / "run", "cpu")
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    x = torch.rand(7, *run.vae.x_shape, generator=torch.Generator().manual_seed(1))
    np.save(exported / "z.npy", z.numpy())
    np.save(exported / "x.npy", x.numpy())
    done = subprocess.run([sys.executable, "-c", WITHOUT_PYRO, str(exported)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    decoded = np.load(exported / "decoded.npy")
    assert decoded.shape == (5, 1, 8, 8)  # items in the data's shape
    np.testing.assert_allclose(decoded, run.vae.decode(z).reshape(5, 1, 8, 8).numpy(), rtol=1e-6, atol=1e-7)
    q = run.vae.encoder(x)
    np.testing.assert_allclose(np.load(exported / "mean.npy"), q.mean.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.load(exported / "stddev.npy"), q.stddev.detach().numpy(), rtol=1e-6, atol=1e-7)
    state = run.vae.state_dict()
    np.testing.assert_array_equal(np.load(exported / "first_weight.npy"), state[sorted(state)[0]].numpy())
    weights = safetensors.load_file(str(exported / "export" / "model.safetensors"))
    assert sorted(weights) == sorted(state) and all(torch.equal(weights[k], state[k]) for k in state)


def test_model_card_and_manifest(exported):
    out = exported / "export"
    manifest = json.loads((out / "export.json").read_text())
    evaluation = json.loads((out / "evaluation.json").read_text())
    final = json.loads((exported / "run" / "final.json").read_text())
    card = (out / "README.md").read_text()
    assert (
        manifest["checkpoint"] == "best" and manifest["item_shape"] == [1, 8, 8] and manifest["encoder_skipped"] is None
    )
    assert evaluation["samples"] == 20 and evaluation["test_log_likelihood"] >= evaluation["test_elbo"] - 1.0
    assert f"| {evaluation['test_elbo']:.3f} |" in card and f"| {evaluation['test_log_likelihood']:.3f} |" in card
    assert f"{final['test_elbo']:.3f}" in card and "digits" in card and "| `z_dim` | `2` |" in card
    for picture in ("samples.png", "reconstructions.png", "curves.png", "manifold.png"):
        assert f"]({picture})" in card and (out / picture).read_bytes() == (exported / "run" / picture).read_bytes()
    import hashlib

    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_export_refusals(exported, capsys):
    assert main(["export", str(exported / "run"), "-o", str(exported / "export")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not empty; choose another -o or pass --overwrite" in err
    assert len(err.strip().splitlines()) == 1
    (exported / "a-file").write_text("x")
    assert main(["export", str(exported / "run"), "-o", str(exported / "a-file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_flow_guide_exports_without_an_encoder(tmp_path):
    from pyro_vae.runs.export import export_run

    run = fit(out=tmp_path / "run", epochs=1, guide="planar", **TINY)
    manifest = export_run(run, tmp_path / "export", eval_samples=5, eval_subset=20)
    assert "no closed-form mean" in manifest["encoder_skipped"] and not (tmp_path / "export" / "encoder.pt2").exists()
    assert "no `encoder.pt2`" in (tmp_path / "export" / "README.md").read_text()
    decoder = torch.export.load(str(tmp_path / "export" / "decoder.pt2")).module()
    z = torch.randn(3, 2)
    torch.testing.assert_close(decoder(z), run.vae.decode(z).reshape(3, 1, 8, 8))
    with pytest.raises(UserError, match="not the run folder itself"):
        export_run(run, tmp_path / "run", overwrite=True)


WITHOUT_PYRO_ONNX = """
import sys
sys.modules["pyro"] = None
sys.modules["pyro_vae"] = None
sys.modules["torch"] = None  # ONNX Runtime alone
import numpy as np
import onnxruntime

folder = sys.argv[1]
decoder = onnxruntime.InferenceSession(folder + "/onnx/decoder.onnx")
encoder = onnxruntime.InferenceSession(folder + "/onnx/encoder.onnx")
np.save(folder + "/onnx_decoded.npy", decoder.run(None, {decoder.get_inputs()[0].name: np.load(folder + "/z.npy")})[0])
mean, stddev = encoder.run(None, {encoder.get_inputs()[0].name: np.load(folder + "/x.npy")})
np.save(folder + "/onnx_mean.npy", mean)
np.save(folder + "/onnx_stddev.npy", stddev)
"""


def test_onnx_models_match_the_run_in_onnx_runtime(exported):
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from pyro_vae.runs.export import export_run

    run = load_run(exported / "run", "cpu")
    manifest = export_run(run, exported / "onnx", eval_samples=2, eval_subset=10, onnx=True)
    assert {"encoder.onnx", "decoder.onnx"} <= set(manifest["files"]) and manifest["onnx"] is True
    z = torch.randn(9, 2, generator=torch.Generator().manual_seed(2))
    x = torch.rand(4, *run.vae.x_shape, generator=torch.Generator().manual_seed(3))
    np.save(exported / "z.npy", z.numpy())
    np.save(exported / "x.npy", x.numpy())
    done = subprocess.run([sys.executable, "-c", WITHOUT_PYRO_ONNX, str(exported)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # another runtime's float32 kernels: equal up to rounding
    np.testing.assert_allclose(np.load(exported / "onnx_decoded.npy"), run.vae.decode(z).reshape(9, 1, 8, 8).numpy(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    q = run.vae.encoder(x)
    np.testing.assert_allclose(np.load(exported / "onnx_mean.npy"), q.mean.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(exported / "onnx_stddev.npy"), q.stddev.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert "`decoder.onnx`, `encoder.onnx`" in (exported / "onnx" / "README.md").read_text()


def test_onnx_without_its_packages_names_the_extra(exported, monkeypatch):
    import importlib.util

    from pyro_vae.runs.export import export_run

    real = importlib.util.find_spec
    # whether or not they are installed here: the message names both, and the extra that brings them
    hidden = ("onnx", "onnxscript")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))
    with pytest.raises(
        UserError,
        match=r"--onnx needs the optional packages onnx and onnxscript: pip install "
        r"'pyro-vae\[onnx\]' \(from a checkout: pip install -e '\.\[onnx\]'\)",
    ):
        export_run(load_run(exported / "run", "cpu"), exported / "never", onnx=True)
    assert not (exported / "never").exists()


# Runs with labels (issue 23): the programs take the class indices y beside z and x ------------------------

#: runs in a fresh interpreter without Pyro and pyro-vae: the model card's snippet, then the programs on saved inputs
LABELLED_WITHOUT_PYRO = """
import os
import re
import sys
sys.modules["pyro"] = None
sys.modules["pyro_vae"] = None
import numpy as np
import torch

folder = sys.argv[1]
os.chdir(folder + "/export")
card = open("README.md").read()
exec(re.search(r"```python\\n(.*?)```", card, re.S).group(1), {})  # the model card's usage snippet runs
z, x, y = (torch.from_numpy(np.load(folder + "/" + n + ".npy")) for n in ("z", "x", "y"))
np.save(folder + "/decoded.npy", torch.export.load("decoder.pt2").module()(z, y).detach().numpy())
mean, stddev = torch.export.load("encoder.pt2").module()(x, y)
np.save(folder + "/mean.npy", mean.detach().numpy())
np.save(folder + "/stddev.npy", stddev.detach().numpy())
if os.path.exists("classifier.pt2"):
    np.save(folder + "/probabilities.npy", torch.export.load("classifier.pt2").module()(x).detach().numpy())
"""


@pytest.fixture(scope="module", params=["conditional", "semi_supervised"])
def labelled_export(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    kind = {"conditional": True} if request.param == "conditional" else {"semi_supervised": True, "labelled": 50}
    fit(out=folder / "run", epochs=1, **kind, **TINY)
    assert main(["export", str(folder / "run"), "-o", str(folder / "export"), "--eval-samples", "5",
                 "--eval-subset", "40"]) == 0  # fmt: skip
    return folder


def test_labelled_programs_match_the_model_without_pyro(labelled_export):
    folder = labelled_export
    run = load_run(folder / "run", "cpu")
    vae, classes = run.vae, run.vae.num_classes
    z = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    x = torch.rand(12, *vae.x_shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(12) % classes
    for name, value in (("z", z), ("x", x), ("y", y)):
        np.save(folder / f"{name}.npy", value.numpy())
    done = subprocess.run([sys.executable, "-c", LABELLED_WITHOUT_PYRO, str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # E[x | z, y]: the likelihood's mean of the decoder at the code (z, onehot(y)), computed here directly
    expected = vae.likelihood.mean(vae.decoder(torch.cat([z, torch.eye(classes)[y]], -1))).detach()
    np.testing.assert_allclose(
        np.load(folder / "decoded.npy"), expected.reshape(12, 1, 8, 8).numpy(), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(np.load(folder / "decoded.npy"), vae.decode(z, y).reshape(12, 1, 8, 8).numpy(),
                               rtol=1e-6, atol=1e-7)  # fmt: skip
    q = vae.encoder(torch.cat([x.reshape(12, -1), torch.eye(classes)[y]], -1))  # q(z | x, y) on the packed input
    assert isinstance(q, torch.distributions.Independent)  # the diagonal Gaussian: mean and stddev are loc and scale
    np.testing.assert_allclose(np.load(folder / "mean.npy"), q.base_dist.loc.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.load(folder / "stddev.npy"), q.base_dist.scale.detach().numpy(), rtol=1e-6, atol=1e-7)
    manifest = json.loads((folder / "export" / "export.json").read_text())
    card = (folder / "export" / "README.md").read_text()
    decoder_inputs = manifest["signatures"]["decoder"]["inputs"]
    assert [(i["name"], i["shape"], i["dtype"]) for i in decoder_inputs] == [
        ("z", ["N", 2], "float32"),
        ("y", ["N"], "int64"),
    ]
    assert manifest["signatures"]["encoder"]["inputs"][1]["name"] == "y" and manifest["num_classes"] == classes
    assert "`decoder.pt2`: `z` (N, 2) float32, `y` (N,) int64 -> E[x | z, y] (N, 1, 8, 8)." in card
    assert f"y = torch.arange(16) % {classes}" in card and "mean, stddev = encoder(images, y)" in card
    if manifest["labels"] == "semi-supervised":
        expected = torch.softmax(vae.classifier(x), -1).detach().numpy()
        np.testing.assert_allclose(np.load(folder / "probabilities.npy"), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.load(folder / "probabilities.npy").sum(-1), 1.0, rtol=1e-6)
        assert "classifier.pt2" in manifest["files"] and manifest["signatures"]["classifier"]["outputs"][0]["shape"] == [
            "N", classes]  # fmt: skip
        assert "`classifier.pt2`: `x` (N, 1, 8, 8) float32 -> q(y | x) (N, 10)" in card
    else:
        assert manifest["labels"] == "conditional" and "classifier" not in manifest["signatures"]
        assert not (folder / "export" / "classifier.pt2").exists()


LABELLED_ONNX = """
import sys
sys.modules["pyro"] = None
sys.modules["pyro_vae"] = None
sys.modules["torch"] = None  # ONNX Runtime alone
import os
import numpy as np
import onnxruntime

folder = sys.argv[1]
z, x, y = (np.load(folder + "/" + n + ".npy") for n in ("z", "x", "y"))
run = lambda name, **inputs: onnxruntime.InferenceSession(folder + "/onnx/" + name + ".onnx").run(None, inputs)
np.save(folder + "/onnx_decoded.npy", run("decoder", z=z, y=y)[0])
mean, stddev = run("encoder", x=x, y=y)
np.save(folder + "/onnx_mean.npy", mean)
if os.path.exists(folder + "/onnx/classifier.onnx"):
    np.save(folder + "/onnx_probabilities.npy", run("classifier", x=x)[0])
"""


def test_labelled_onnx_models_match_in_onnx_runtime(labelled_export):
    pytest.importorskip("onnx", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from pyro_vae.runs.export import export_run

    folder = labelled_export
    run = load_run(folder / "run", "cpu")
    vae = run.vae
    manifest = export_run(run, folder / "onnx", eval_samples=2, eval_subset=10, onnx=True)
    semi = manifest["labels"] == "semi-supervised"
    assert {"encoder.onnx", "decoder.onnx"} | ({"classifier.onnx"} if semi else set()) <= set(manifest["files"])
    assert not list((folder / "onnx").glob("*.data"))  # self-contained models
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(2))
    x = torch.rand(5, *vae.x_shape, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([3, 0, 9, 1, 1])
    for name, value in (("z", z), ("x", x), ("y", y)):
        np.save(folder / f"{name}.npy", value.numpy())
    done = subprocess.run([sys.executable, "-c", LABELLED_ONNX, str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(folder / "onnx_decoded.npy"), vae.decode(z, y).reshape(5, 1, 8, 8).numpy(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(np.load(folder / "onnx_mean.npy"), vae.encoder(vae.pack(x, y)).mean.detach().numpy(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    if semi:
        np.testing.assert_allclose(np.load(folder / "onnx_probabilities.npy"),
                                   torch.softmax(vae.classifier(x), -1).detach().numpy(), rtol=1e-5, atol=1e-6)  # fmt: skip


def test_a_failed_trace_is_one_error_line_and_leaves_nothing(exported, monkeypatch, capsys):
    import logging

    def fails(*args, **kwargs):
        # what a failing trace does: torch logs the failing operation at length, then raises
        logging.getLogger("torch._subclasses.fake_tensor").error("fake tensor log line that must not be shown")
        logging.getLogger("torch.export").warning("export log line that must not be shown")
        raise RuntimeError("a and b must have same reduction dim\nsecond line")

    monkeypatch.setattr(torch.export, "export", fails)
    levels = {n: logging.getLogger(n).level for n in ("torch", "torch._subclasses.fake_tensor", "torch.export")}
    target = exported / "failed" / "export"
    assert main(["export", str(exported / "run"), "-o", str(target)]) == 2
    captured = capsys.readouterr()
    assert (
        captured.err
        == "error: torch.export could not trace the decoder: RuntimeError: a and b must have same reduction dim\n"
    )
    assert "must not be shown" not in captured.out
    assert not (exported / "failed").exists()  # no partial folder, no staging folder, not the parent it created
    assert {n: logging.getLogger(n).level for n in levels} == levels  # the loggers' levels restored
    # an --overwrite of an existing export that fails keeps that export as it was
    before = {p.name: p.read_bytes() for p in (exported / "export").iterdir()}
    assert main(["export", str(exported / "run"), "-o", str(exported / "export"), "--overwrite"]) == 2
    assert {p.name: p.read_bytes() for p in (exported / "export").iterdir()} == before
    assert not list(exported.glob(".export.*.staging"))


def test_overwrite_replaces_the_export(exported, tmp_path):
    from pyro_vae.runs.export import export_run

    out = tmp_path / "again"
    out.mkdir()
    (out / "classifier.pt2").write_text("from an earlier export")  # not written by this export: removed
    (out / "notes.txt").write_text("the user's")  # not an export file: kept
    manifest = export_run(load_run(exported / "run", "cpu"), out, eval_samples=2, eval_subset=10, overwrite=True)
    assert not (out / "classifier.pt2").exists() and (out / "notes.txt").read_text() == "the user's"
    assert set(manifest["files"]) <= {p.name for p in out.iterdir()} and not list(tmp_path.glob(".again.*"))
    assert manifest["labels"] is None and "y" not in [i["name"] for i in manifest["signatures"]["decoder"]["inputs"]]
