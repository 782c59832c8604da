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
    assert manifest["checkpoint"] == "best" and manifest["item_shape"] == [1, 8, 8] and manifest["encoder_skipped"] is None
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
    with pytest.raises(UserError, match=r"--onnx needs the optional packages onnx and onnxscript: pip install "
                                        r"'pyro-vae\[onnx\]' \(from a checkout: pip install -e '\.\[onnx\]'\)"):
        export_run(load_run(exported / "run", "cpu"), exported / "never", onnx=True)
    assert not (exported / "never").exists()
