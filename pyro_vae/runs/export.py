r"""``pyro-vae export RUN``: a trained run as files people reuse without pyro-vae or Pyro.

:func:`export_run` writes into one folder:

- ``model.safetensors``: every weight of the VAE (``vae.state_dict()``, float tensors on the CPU) in
  the `safetensors <https://huggingface.co/docs/safetensors>`_ format, the run's settings in its
  metadata (``config``: ``config.json`` as JSON). Read it with ``safetensors.torch.load_file``.
- ``decoder.pt2``: the decoder as a :mod:`torch.export` program (the successor of TorchScript, which
  PyTorch deprecates): codes ``z`` of shape ``(N, z_dim)``, float32, to :math:`\mathbb{E}[x \mid z]`,
  the likelihood's mean, of shape ``(N, *item_shape)`` (what :meth:`Run.sample
  <pyro_vae.runs.run.Run.sample>` returns).
- ``encoder.pt2``: the guide :math:`q_\phi(z \mid x)` as a program mapping items ``(N, *item_shape)``,
  float32 prepared as for training, to the posterior's ``(mean, stddev)``, each ``(N, z_dim)`` (for
  the diagonal guide, its ``loc`` and ``scale``). Guides whose posterior has no closed-form mean
  (the ``iaf`` and ``planar`` flows) have no encoder file; the model card says why.
- ``encoder.onnx``, ``decoder.onnx`` (with ``onnx=True``, ``--onnx``): the same two programs as ONNX models
  (:func:`torch.onnx.export` of the exported programs; needs ``pip install 'pyro-vae[onnx]'``: onnx and
  onnxscript), with a dynamic batch dimension, for ONNX Runtime and other runtimes.
- ``README.md``: a model card: the data, the settings, the test ELBO (``final.json``) and the
  importance-sampled :math:`\log p(x)` (``evaluation.json``, evaluated now when the run folder has
  none), how to load each file, and the run's pictures (copied beside it).
- ``export.json``: what was written, the shapes, the sha256 of each file.

Load the programs with nothing but PyTorch::

    import torch
    decoder = torch.export.load("decoder.pt2").module()
    images = decoder(torch.randn(16, z_dim))        # (16, *item_shape)
    mean, stddev = torch.export.load("encoder.pt2").module()(images)
"""

import hashlib
import json
import math
import shutil
from pathlib import Path

import torch
import torch.nn as nn

import pyro

from ..checkpoint import atomic_write, atomic_write_text, refuse_symlink
from ..errors import UserError
from .run import write_file_checked

__all__ = ["EXPORT_FILES", "export_run"]

#: the files :func:`export_run` may write (pictures of the run folder are copied beside them)
EXPORT_FILES = ("model.safetensors", "encoder.pt2", "decoder.pt2", "encoder.onnx", "decoder.onnx", "README.md",
                "export.json", "evaluation.json")
#: the run folder's pictures the model card shows
PICTURES = ("samples.png", "reconstructions.png", "curves.png", "manifold.png")


class DecoderMean(nn.Module):
    """``z (N, z_dim) -> E[x | z] (N, *item_shape)``: the decoder followed by the likelihood's mean."""

    def __init__(self, vae):
        super().__init__()
        self.decoder, self.likelihood, self.item_shape = vae.decoder, vae.likelihood, tuple(vae.x_shape)

    def forward(self, z):
        return self.likelihood.mean(self.decoder(z)).reshape((-1, *self.item_shape))


class EncoderMoments(nn.Module):
    """``x (N, *item_shape) -> (mean, stddev)`` of :math:`q_\\phi(z \\mid x)`, each ``(N, z_dim)``."""

    def __init__(self, vae):
        super().__init__()
        self.guide = vae.encoder

    def forward(self, x):
        q = self.guide(x)
        return q.mean, q.stddev


def _no_validation():
    """Distribution argument checks off (they branch on values, which an exported program cannot)."""
    import contextlib

    @contextlib.contextmanager
    def context():
        before = torch.distributions.Distribution._validate_args
        torch.distributions.Distribution.set_default_validate_args(False)
        try:
            with pyro.validation_enabled(False):
                yield
        finally:
            torch.distributions.Distribution.set_default_validate_args(before)

    return context()


def _export_program(module, example, path, onnx=False):
    """``torch.export`` ``module`` with a dynamic batch dimension and save it at ``path`` (``.pt2``); with
    ``onnx`` also as an ONNX model beside it (``.onnx``)."""
    batch = torch.export.Dim("batch", min=1, max=2**20)
    with _no_validation(), torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)
        if onnx:
            target = Path(path).with_suffix(".onnx")
            refuse_symlink(target)
            torch.onnx.export(program, (example,), str(target), dynamo=True, verbose=False)
    refuse_symlink(path)
    torch.export.save(program, str(path))


def _encoder_reason(vae):
    """``None`` when the guide's posterior has a closed-form mean and standard deviation; else why not."""
    x = torch.full((2, *vae.x_shape), 0.5, device=next(vae.parameters()).device)
    try:
        with _no_validation(), torch.no_grad():
            q = vae.encoder(x)
            mean, stddev = q.mean, q.stddev
    except NotImplementedError:
        return f"its guide's posterior ({type(vae.encoder).__name__}) has no closed-form mean and stddev"
    if tuple(mean.shape) != (2, vae.z_dim) or tuple(stddev.shape) != (2, vae.z_dim):
        return f"its guide's posterior has mean of shape {tuple(mean.shape)}, not (N, z_dim)"
    return None


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _number(value, digits=3):
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def export_run(run, out, eval_samples=100, eval_subset=None, seed=0, overwrite=False, onnx=False):
    """Write the run's weights, its encoder and decoder programs and a model card into the folder ``out``.

    :param run: a :class:`~pyro_vae.runs.run.Run` (e.g. :func:`~pyro_vae.runs.run.load_run`'s).
    :param out: the export folder (created; an existing one must be empty unless ``overwrite``).
    :param int eval_samples: importance samples per test item for :math:`\\log p(x)` when the run folder
        has no ``evaluation.json`` (it is evaluated now, seeded by ``seed``, on ``eval_subset`` items).
    :param bool onnx: also write ``encoder.onnx`` and ``decoder.onnx``.
    :returns: the manifest (``export.json``'s dict).
    :raises UserError: a missing ``safetensors`` package, an export folder in the way or unwritable, a
        model :mod:`torch.export` cannot trace (one line).
    """
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("export needs the optional package safetensors: pip install 'pyro-vae[export]' "
                        "(from a checkout: pip install -e '.[export]')") from None  # fmt: skip
    if onnx:
        import importlib.util

        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"--onnx needs the optional packages {' and '.join(missing)}: pip install 'pyro-vae[onnx]' "
                            "(from a checkout: pip install -e '.[onnx]')")  # fmt: skip
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"cannot export to {out}: a file of that name exists")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; choose another -o or pass --overwrite")
    if out.resolve() == run.directory.resolve():
        raise UserError("export into a folder of its own, not the run folder itself")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror or e}") from None
    vae = run.vae.eval()
    cpu = next(vae.parameters()).device.type == "cpu"
    if not cpu:
        raise UserError("export a run opened on the CPU (--device cpu)")
    meta = {k: v for k, v in run.meta.items()}
    manifest = {"run": str(run.directory.resolve()), "checkpoint": run.checkpoint, "item_shape": list(vae.x_shape),
                "z_dim": vae.z_dim, "likelihood": run.config.likelihood, "guide": run.config.guide, "onnx": bool(onnx),
                "files": {}}  # fmt: skip

    # the weights
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in vae.state_dict().items()}
    write_file_checked(out / "model.safetensors", lambda p: save_file(
        weights, str(p), metadata={"format": "pt", "config": json.dumps(meta, default=str)}), "weights")

    # the programs
    example_z = torch.zeros(3, vae.z_dim)
    try:
        _export_program(DecoderMean(vae), example_z, out / "decoder.pt2", onnx)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"torch.export could not trace the decoder: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    reason = _encoder_reason(vae)
    if reason is None:
        try:
            _export_program(EncoderMoments(vae), torch.full((3, *vae.x_shape), 0.5), out / "encoder.pt2", onnx)
        except Exception as e:
            reason = f"torch.export could not trace its guide ({type(e).__name__}: {str(e).splitlines()[0]})"
    manifest["encoder_skipped"] = reason

    # the scores
    evaluation = None
    saved = run.directory / "evaluation.json"
    if saved.exists() and run.checkpoint == "best":
        try:
            evaluation = json.loads(saved.read_text())
        except ValueError:
            evaluation = None
    if evaluation is None:
        evaluation = run.evaluate(samples=eval_samples, subset=eval_subset, seed=seed)
        atomic_write_text(out / "evaluation.json", json.dumps(evaluation, indent=2) + "\n")
    manifest["evaluation"] = {k: evaluation.get(k) for k in ("test_elbo", "test_log_likelihood", "samples", "items",
                                                               "bits_per_dim")}  # fmt: skip
    pictures = []
    for name in PICTURES:
        source = run.directory / name
        if source.is_file() and not source.is_symlink():
            write_file_checked(out / name, lambda p, s=source: shutil.copyfile(s, p), "picture")
            pictures.append(name)
    write_file_checked(out / "README.md", lambda p: atomic_write_text(p, model_card(run, evaluation, manifest, pictures)),
                       "model card")  # fmt: skip
    for name in [*EXPORT_FILES, *pictures]:
        if (out / name).is_file() and name != "export.json":
            manifest["files"][name] = _sha256(out / name)
    atomic_write(out / "export.json", lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))
    return manifest


def model_card(run, evaluation, manifest, pictures):
    """The export's ``README.md``: data, settings, scores, how to load each file, pictures."""
    c, meta, final = run.config, run.meta, run.final or {}
    data = c.data or c.dataset
    shape = " x ".join(map(str, manifest["item_shape"]))
    lines = [
        f"# {c.likelihood} VAE on {Path(str(data)).name}",
        "",
        "A variational autoencoder (Kingma & Welling 2013) trained with pyro-vae: "
        f"latent size {c.z_dim}, guide `{c.guide}`, likelihood `{c.likelihood}`, architecture `{c.arch}`.",
        "",
        "## Data",
        "",
        f"- data set: `{data}`; items of shape {shape} ({meta.get('x_dim')} values), "
        f"{meta.get('levels') or 'continuous'} levels",
        f"- {meta.get('n_train')} training items ({meta.get('n_valid')} of them held out for validation), "
        f"{meta.get('n_test')} test items",
        "",
        "## Scores (nats per item; higher is better)",
        "",
        "| score | value |",
        "| --- | --- |",
        f"| test ELBO (checkpoint `{run.checkpoint}`, {evaluation.get('items')} items) | "
        f"{_number(evaluation.get('test_elbo'))} |",
        f"| test log p(x) >= ({evaluation.get('samples')} importance samples) | "
        f"{_number(evaluation.get('test_log_likelihood'))} |",
    ]
    if evaluation.get("bits_per_dim") is not None:
        lines.append(f"| bits per dimension | {_number(evaluation['bits_per_dim'], 4)} |")
    if final:
        lines.append(f"| test ELBO at the end of training (final.json; best epoch {final.get('best_epoch')} of "
                     f"{final.get('epochs')}) | {_number(final.get('test_elbo'))} |")  # fmt: skip
    lines += ["", "## Settings", "", "| setting | value |", "| --- | --- |"]
    for key, value in c.to_dict().items():
        if key in ("data_dir",):
            continue
        lines.append(f"| `{key}` | `{json.dumps(value)}` |")
    versions = meta.get("versions") or {}
    if versions:
        lines += ["", "Trained with " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."]
    lines += [
        "",
        "## Files",
        "",
        "- `model.safetensors`: the weights (`safetensors.torch.load_file`); the settings in its metadata.",
        f"- `decoder.pt2`: `z` of shape (N, {c.z_dim}) -> E[x | z] of shape (N, {', '.join(map(str, manifest['item_shape']))}).",
    ]
    if manifest.get("onnx"):
        lines.append("- `decoder.onnx`" + ("" if manifest.get("encoder_skipped") else ", `encoder.onnx`")
                     + ": the same as ONNX models (input `z` or `x`, a dynamic batch dimension), e.g. for ONNX Runtime.")
    if manifest.get("encoder_skipped"):
        lines.append(f"- no `encoder.pt2`: {manifest['encoder_skipped']}.")
    else:
        lines.append(f"- `encoder.pt2`: items (N, {', '.join(map(str, manifest['item_shape']))}), float32 prepared "
                     f"as for training -> (mean, stddev) of q(z | x), each (N, {c.z_dim}).")  # fmt: skip
    lines += [
        "",
        "They need PyTorch only (no Pyro, no pyro-vae):",
        "",
        "```python",
        "import torch",
        "",
        'decoder = torch.export.load("decoder.pt2").module()',
        f"images = decoder(torch.randn(16, {c.z_dim}))",
    ]
    if not manifest.get("encoder_skipped"):
        lines += ['encoder = torch.export.load("encoder.pt2").module()', "mean, stddev = encoder(images)"]
    lines += ["```", ""]
    if pictures:
        lines += ["## Pictures", ""]
        captions = {"samples.png": "Samples: decoder means for z drawn from the prior",
                    "reconstructions.png": "Test items (top) and their reconstructions (bottom)",
                    "curves.png": "Training curves", "manifold.png": "The 2-D latent manifold"}  # fmt: skip
        for name in pictures:
            lines += [f"![{captions[name]}]({name})", "", captions[name] + ".", ""]
    return "\n".join(lines)
