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
- For a run with labels (``fit --conditional`` or ``--semi-supervised``, :mod:`pyro_vae.vae.labels`) both
  programs take the items' labels as a second input, ``y`` of shape ``(N,)``, int64 class indices
  ``0 .. C-1`` (one-hot encoded inside the program, as in training): ``decoder(z, y)`` gives
  :math:`\mathbb{E}[x \mid z, y]` and ``encoder(x, y)`` the ``(mean, stddev)`` of :math:`q_\phi(z \mid x, y)`.
  A semi-supervised (M2) run also gets ``classifier.pt2``: items ``(N, *item_shape)`` to the class
  probabilities of :math:`q_\phi(y \mid x)`, ``(N, C)`` (the softmax of the classifier's logits).
- ``encoder.onnx``, ``decoder.onnx`` (and ``classifier.onnx``) (with ``onnx=True``, ``--onnx``): the same
  programs as ONNX models (:func:`torch.onnx.export` of the exported programs; needs
  ``pip install 'pyro-vae[onnx]'``: onnx and onnxscript), with a dynamic batch dimension, for ONNX Runtime
  and other runtimes; their inputs are named as above (``z``, ``x``, ``y``).
- ``README.md``: a model card: the data, the settings, the test ELBO (``final.json``) and the
  importance-sampled :math:`\log p(x)` (``evaluation.json``, evaluated now when the run folder has
  none), each program's inputs and outputs, how to load each file, and the run's pictures (copied beside it).
- ``export.json``: what was written, the programs' signatures (``signatures``: inputs and outputs with
  their shapes, ``"N"`` the batch dimension, and dtypes), the sha256 of each file.

The folder is written whole or not at all: everything goes into a staging folder beside it
(``.NAME.*.staging``), renamed to ``NAME`` at the end (with ``overwrite``, each file is moved into the existing
folder by an atomic rename, and export files of an earlier export that this one does not write are removed).
A model :mod:`torch.export` cannot trace is one :class:`~pyro_vae.errors.UserError`; PyTorch's own logging
of the failed trace is silenced while exporting (:func:`quiet_torch_logs`).

Load the programs with nothing but PyTorch::

    import torch
    decoder = torch.export.load("decoder.pt2").module()
    images = decoder(torch.randn(16, z_dim))        # (16, *item_shape)
    mean, stddev = torch.export.load("encoder.pt2").module()(images)

and for a run with ``C`` classes::

    y = torch.arange(16) % C                        # (16,) int64 class indices
    images = decoder(torch.randn(16, z_dim), y)
    mean, stddev = encoder(images, y)
    probabilities = torch.export.load("classifier.pt2").module()(images)   # (16, C), M2 only
"""

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

import pyro

from ..checkpoint import atomic_write, atomic_write_text, refuse_symlink, usual_mode
from ..errors import UserError
from ..vae.labels import LabelledVAE, SemiSupervisedVAE, one_hot
from .run import write_file_checked

__all__ = ["EXPORT_FILES", "export_run", "quiet_torch_logs"]

#: the files :func:`export_run` may write (pictures of the run folder are copied beside them)
EXPORT_FILES = ("model.safetensors", "encoder.pt2", "decoder.pt2", "classifier.pt2", "encoder.onnx", "decoder.onnx",
                "classifier.onnx", "README.md", "export.json", "evaluation.json")  # fmt: skip
#: the run folder's pictures the model card shows
PICTURES = ("samples.png", "reconstructions.png", "curves.png", "manifold.png", "latents.png")
#: the loggers :func:`quiet_torch_logs` silences (with every logger below them)
TORCH_LOGGERS = ("torch", "onnxscript", "onnx_ir")


class DecoderMean(nn.Module):
    """``z (N, z_dim) -> E[x | z] (N, *item_shape)``: the decoder followed by the likelihood's mean."""

    def __init__(self, vae):
        super().__init__()
        self.decoder, self.likelihood, self.item_shape = vae.decoder, vae.likelihood, tuple(vae.x_shape)

    def forward(self, z):
        return self.likelihood.mean(self.decoder(z)).reshape((-1, *self.item_shape))


class LabelledDecoderMean(DecoderMean):
    """``(z (N, z_dim), y (N,) int64) -> E[x | z, y] (N, *item_shape)``: the decoder of a model with labels at
    the code ``(z, onehot(y))`` (:meth:`LabelledVAE.code <pyro_vae.vae.labels.LabelledVAE.code>`)."""

    def __init__(self, vae):
        super().__init__(vae)
        self.num_classes = vae.num_classes

    def forward(self, z, y):  # type: ignore[override]
        return super().forward(torch.cat([z, one_hot(y, self.num_classes, z)], dim=-1))


class EncoderMoments(nn.Module):
    """``x (N, *item_shape) -> (mean, stddev)`` of :math:`q_\\phi(z \\mid x)`, each ``(N, z_dim)``."""

    def __init__(self, vae):
        super().__init__()
        self.guide = vae.encoder

    def forward(self, x):
        q = self.guide(x)
        return q.mean, q.stddev


class LabelledEncoderMoments(EncoderMoments):
    """``(x (N, *item_shape), y (N,) int64) -> (mean, stddev)`` of :math:`q_\\phi(z \\mid x, y)`, each ``(N, z_dim)``:
    the guide at the packed input ``(flat x, onehot(y))`` (:meth:`LabelledVAE.pack <pyro_vae.vae.labels.LabelledVAE.pack>`)."""

    def __init__(self, vae):
        super().__init__(vae)
        self.num_classes = vae.num_classes

    def forward(self, x, y):  # type: ignore[override]
        flat = x.flatten(1)
        return super().forward(torch.cat([flat, one_hot(y, self.num_classes, flat)], dim=-1))


class ClassProbabilities(nn.Module):
    """``x (N, *item_shape) -> (N, C)``: the probabilities of :math:`q_\\phi(y \\mid x)`, the softmax of the
    semi-supervised model's classifier logits."""

    def __init__(self, vae):
        super().__init__()
        self.classifier = vae.classifier

    def forward(self, x):
        return torch.softmax(self.classifier(x), dim=-1)


def _no_validation():
    """Distribution argument checks off (they branch on values, which an exported program cannot)."""

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


@contextlib.contextmanager
def quiet_torch_logs():
    """Silence PyTorch's (and the ONNX exporter's) logging inside the block: a trace that fails makes
    :mod:`torch.export` log the failing operation at length (``torch._subclasses.fake_tensor``,
    ``torch.fx.experimental.symbolic_shapes``, ...) before it raises, and the caller's one-line
    :class:`~pyro_vae.errors.UserError` is all the user should see. The level of each of these loggers
    is raised above ``CRITICAL`` and restored afterwards."""
    names = [n for n in [*TORCH_LOGGERS, *logging.root.manager.loggerDict]
             if n in TORCH_LOGGERS or n.startswith(tuple(f"{t}." for t in TORCH_LOGGERS))]  # fmt: skip
    saved = {}
    for name in dict.fromkeys(names):
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _export_program(module, examples, path, onnx=False):
    """``torch.export`` ``module`` at the example inputs ``examples`` (a tuple), with one dynamic batch dimension
    shared by all inputs, and save it at ``path`` (``.pt2``); with ``onnx`` also as an ONNX model beside it
    (``.onnx``)."""
    batch = torch.export.Dim("batch", min=1, max=2**20)
    with quiet_torch_logs(), _no_validation(), torch.no_grad():
        program = torch.export.export(module, examples, dynamic_shapes=tuple({0: batch} for _ in examples),
                                      strict=False)  # fmt: skip
        if onnx:
            target = Path(path).with_suffix(".onnx")
            refuse_symlink(target)
            torch.onnx.export(
                program, examples, str(target), dynamo=True, verbose=False, external_data=False
            )  # one file with its weights (no .onnx.data beside it)
    refuse_symlink(path)
    torch.export.save(program, str(path))


def _first_line(e):
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _encoder_reason(vae):
    """``None`` when the guide's posterior has a closed-form mean and standard deviation; else why not."""
    x = torch.full((2, *vae.x_shape), 0.5, device=next(vae.parameters()).device)
    try:
        with _no_validation(), torch.no_grad():
            if isinstance(vae, LabelledVAE):
                q = vae.encoder(vae.pack(x, torch.zeros(2, dtype=torch.long, device=x.device)))
            else:
                q = vae.encoder(x)
            mean, stddev = q.mean, q.stddev
    except NotImplementedError:
        return f"its guide's posterior ({type(vae.encoder).__name__}) has no closed-form mean and stddev"
    if tuple(mean.shape) != (2, vae.z_dim) or tuple(stddev.shape) != (2, vae.z_dim):
        return f"its guide's posterior has mean of shape {tuple(mean.shape)}, not (N, z_dim)"
    return None


def _signatures(vae):
    """The programs' inputs and outputs for ``export.json``: name, shape (``"N"`` the batch dimension), dtype."""
    items, z = ["N", *vae.x_shape], ["N", vae.z_dim]
    labels = isinstance(vae, LabelledVAE)
    y = [{"name": "y", "shape": ["N"], "dtype": "int64", "values": f"class indices 0..{vae.num_classes - 1}"}] \
        if labels else []  # fmt: skip
    given = " | z, y" if labels else " | z"
    signatures = {
        "decoder": {"inputs": [{"name": "z", "shape": z, "dtype": "float32"}, *y],
                    "outputs": [{"name": f"E[x{given}]", "shape": items, "dtype": "float32"}]},
        "encoder": {"inputs": [{"name": "x", "shape": items, "dtype": "float32"}, *y],
                    "outputs": [{"name": f"mean of q(z | x{', y' if labels else ''})", "shape": z, "dtype": "float32"},
                                {"name": f"stddev of q(z | x{', y' if labels else ''})", "shape": z,
                                 "dtype": "float32"}]},
    }  # fmt: skip
    if isinstance(vae, SemiSupervisedVAE):
        signatures["classifier"] = {"inputs": [{"name": "x", "shape": items, "dtype": "float32"}],
                                    "outputs": [{"name": "q(y | x)", "shape": ["N", vae.num_classes],
                                                 "dtype": "float32"}]}  # fmt: skip
    return signatures


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _number(value, digits=3):
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def export_run(run, out, eval_samples=100, eval_subset=None, seed=0, overwrite=False, onnx=False):
    """Write the run's weights, its encoder and decoder programs (and an M2 run's classifier) and a model card
    into the folder ``out``, whole or not at all (see the module's docstring).

    :param run: a :class:`~pyro_vae.runs.run.Run` (e.g. :func:`~pyro_vae.runs.run.load_run`'s).
    :param out: the export folder (created; an existing one must be empty unless ``overwrite``).
    :param int eval_samples: importance samples per test item for :math:`\\log p(x)` when the run folder
        has no ``evaluation.json`` (it is evaluated now, seeded by ``seed``, on ``eval_subset`` items).
    :param bool onnx: also write ``encoder.onnx`` and ``decoder.onnx`` (and ``classifier.onnx``).
    :returns: the manifest (``export.json``'s dict).
    :raises UserError: a missing ``safetensors`` package, an export folder in the way or unwritable, a
        model :mod:`torch.export` cannot trace (one line; nothing is left of the export then).
    """
    try:
        import safetensors.torch  # noqa: F401
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
    refuse_symlink(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"cannot export to {out}: a file of that name exists")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty; choose another -o or pass --overwrite")
    if out.resolve() == run.directory.resolve():
        raise UserError("export into a folder of its own, not the run folder itself")
    if next(run.vae.parameters()).device.type != "cpu":
        raise UserError("export a run opened on the CPU (--device cpu)")
    new_parents = [p for p in out.absolute().parents if not p.exists()]  # nearest first: removed again on failure
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".staging"))
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror or e}") from None
    try:
        manifest = _write_export(run, staging, eval_samples, eval_subset, seed, onnx)
        _commit(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in new_parents:
            try:
                parent.rmdir()  # only while empty
            except OSError:
                break
        raise
    return manifest


def _commit(staging, out):
    """Make the written ``staging`` folder the export folder ``out``: one rename when ``out`` is new, else each
    file moved into it by an atomic rename and the export files of an earlier export not written now removed."""
    try:
        if not out.exists():
            os.chmod(staging, usual_mode(0o777))  # mkdtemp makes 0700 folders; give the usual permissions
            os.rename(staging, out)
            return
        written = {p.name for p in staging.iterdir()}
        for name in sorted(written):
            refuse_symlink(out / name)
            os.replace(staging / name, out / name)
        for name in (*EXPORT_FILES, *PICTURES):
            if name not in written and (out / name).is_file() and not (out / name).is_symlink():
                (out / name).unlink()
        staging.rmdir()
    except OSError as e:
        raise UserError(f"cannot write the export folder {out}: {e.strerror or e}") from None


def _write_export(run, out, eval_samples, eval_subset, seed, onnx):
    """:func:`export_run`'s files, written into the (staging) folder ``out``; returns the manifest."""
    from safetensors.torch import save_file

    vae = run.vae.eval()
    labelled = isinstance(vae, LabelledVAE)
    meta = {k: v for k, v in run.meta.items()}
    manifest = {"run": str(run.directory.resolve()), "checkpoint": run.checkpoint, "item_shape": list(vae.x_shape),
                "z_dim": vae.z_dim, "likelihood": run.config.likelihood, "guide": run.config.guide,
                "labels": ("semi-supervised" if isinstance(vae, SemiSupervisedVAE) else "conditional") if labelled
                else None, "num_classes": vae.num_classes if labelled else None, "onnx": bool(onnx),
                "signatures": _signatures(vae), "files": {}}  # fmt: skip

    # the weights
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in vae.state_dict().items()}

    def write_weights(path):
        save_file(weights, str(path), metadata={"format": "pt", "config": json.dumps(meta, default=str)})
        os.chmod(path, usual_mode())  # safetensors makes 0600 files; give the usual permissions

    write_file_checked(out / "model.safetensors", write_weights, "weights")

    # the programs; the example labels 0, 1, 2 (any class indices would do)
    example_y = (torch.arange(3) % vae.num_classes,) if labelled else ()
    example_x = torch.full((3, *vae.x_shape), 0.5)
    decoder = LabelledDecoderMean(vae) if labelled else DecoderMean(vae)
    try:
        _export_program(decoder, (torch.zeros(3, vae.z_dim), *example_y), out / "decoder.pt2", onnx)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"torch.export could not trace the decoder: {_first_line(e)}") from None
    if isinstance(vae, SemiSupervisedVAE):
        try:
            _export_program(ClassProbabilities(vae), (example_x,), out / "classifier.pt2", onnx)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"torch.export could not trace the classifier: {_first_line(e)}") from None
    reason = _encoder_reason(vae)
    if reason is None:
        encoder = LabelledEncoderMoments(vae) if labelled else EncoderMoments(vae)
        try:
            _export_program(encoder, (example_x, *example_y), out / "encoder.pt2", onnx)
        except UserError:
            raise
        except Exception as e:
            reason = f"torch.export could not trace its guide ({_first_line(e)})"
            for name in ("encoder.pt2", "encoder.onnx"):
                (out / name).unlink(missing_ok=True)
    manifest["encoder_skipped"] = reason
    if reason is not None:
        del manifest["signatures"]["encoder"]

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
                                                               "bits_per_dim", "log_likelihood_of", "test_error")}  # fmt: skip
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


def _signature_text(signature):
    """``z (N, 2) float32, y (N,) int64 -> E[x | z, y] (N, 1, 8, 8)``."""

    def shape(s):
        return "(" + ", ".join(map(str, s)) + ("," if len(s) == 1 else "") + ")"

    inputs = ", ".join(f"`{i['name']}` {shape(i['shape'])} {i['dtype']}" for i in signature["inputs"])
    outputs = ", ".join(f"{o['name']} {shape(o['shape'])}" for o in signature["outputs"])
    return f"{inputs} -> {outputs}"


def usage_snippet(manifest):
    """The model card's Python example (it runs in the export folder with PyTorch alone)."""
    z_dim, classes, signatures = manifest["z_dim"], manifest.get("num_classes"), manifest["signatures"]
    lines = ["import torch", "", 'decoder = torch.export.load("decoder.pt2").module()']
    if classes:
        lines += [f"z = torch.randn(16, {z_dim})",
                  f"y = torch.arange(16) % {classes}  # class indices, int64",
                  "images = decoder(z, y)  # E[x | z, y]"]  # fmt: skip
    else:
        lines += [f"images = decoder(torch.randn(16, {z_dim}))  # E[x | z]"]
    if "encoder" in signatures:
        lines += ['encoder = torch.export.load("encoder.pt2").module()',
                  f"mean, stddev = encoder(images{', y' if classes else ''})"]  # fmt: skip
    if "classifier" in signatures:
        lines += ['classifier = torch.export.load("classifier.pt2").module()',
                  f"probabilities = classifier(images)  # q(y | x), (16, {classes})"]  # fmt: skip
    return "\n".join(lines)


def model_card(run, evaluation, manifest, pictures):
    """The export's ``README.md``: data, settings, scores, the programs' signatures, how to load each file, pictures."""
    c, meta, final = run.config, run.meta, run.final or {}
    data = c.data or c.dataset
    shape = " x ".join(map(str, manifest["item_shape"]))
    kind = {"conditional": "conditional ", "semi-supervised": "semi-supervised (M2) "}.get(manifest.get("labels"), "")
    lines = [
        f"# {c.likelihood} {kind}VAE on {Path(str(data)).name}",
        "",
        "A variational autoencoder (Kingma & Welling 2013) trained with pyro-vae: "
        f"latent size {c.z_dim}, guide `{c.guide}`, likelihood `{c.likelihood}`, architecture `{c.arch}`.",
    ]
    if manifest.get("labels"):
        lines[-1] += (f" A {kind}model with labels (Kingma, Rezende, Mohamed & Welling 2014): {manifest['num_classes']} "
                      "classes; the decoder and the encoder take each item's class index y.")  # fmt: skip
    of = evaluation.get("log_likelihood_of") or "log p(x)"
    lines += [
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
        f"| test {of} >= ({evaluation.get('samples')} importance samples) | "
        f"{_number(evaluation.get('test_log_likelihood'))} |",
    ]
    if evaluation.get("bits_per_dim") is not None:
        lines.append(f"| bits per dimension | {_number(evaluation['bits_per_dim'], 4)} |")
    if evaluation.get("test_error") is not None:
        lines.append(
            f"| test classification error of q(y \\| x) (lower is better) | {_number(evaluation['test_error'], 4)} |"
        )
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
    signatures = manifest["signatures"]
    programs = [name for name in ("decoder", "encoder", "classifier") if name in signatures]
    lines += [
        "",
        "## Files",
        "",
        "- `model.safetensors`: the weights (`safetensors.torch.load_file`); the settings in its metadata.",
        f"- `decoder.pt2`: {_signature_text(signatures['decoder'])}.",
    ]
    if manifest.get("encoder_skipped"):
        lines.append(f"- no `encoder.pt2`: {manifest['encoder_skipped']}.")
    else:
        lines.append(f"- `encoder.pt2`: {_signature_text(signatures['encoder'])}; items float32 prepared as for "
                     "training.")  # fmt: skip
    if "classifier" in signatures:
        lines.append(f"- `classifier.pt2`: {_signature_text(signatures['classifier'])}: the class probabilities.")
    if manifest.get("labels"):
        lines.append(f"- `y` is each item's class index, 0 to {manifest['num_classes'] - 1}, as int64 (one-hot encoded "
                     "inside the programs, as in training).")  # fmt: skip
    if manifest.get("onnx"):
        lines.append(", ".join(f"`{name}.onnx`" for name in programs)
                     + ": the same as ONNX models (inputs named as above, a dynamic batch dimension), e.g. for "
                     "ONNX Runtime.")  # fmt: skip
        lines[-1] = "- " + lines[-1]
    lines += ["", "They need PyTorch only (no Pyro, no pyro-vae):", "", "```python", usage_snippet(manifest), "```", ""]
    if pictures:
        lines += ["## Pictures", ""]
        captions = {"samples.png": "Samples: decoder means for z drawn from the prior",
                    "reconstructions.png": "Test items (top) and their reconstructions (bottom)",
                    "curves.png": "Training curves", "manifold.png": "The 2-D latent manifold",
                    "latents.png": "The test items' codes, coloured by label"}  # fmt: skip
        for name in pictures:
            lines += [f"![{captions[name]}]({name})", "", captions[name] + ".", ""]
    return "\n".join(lines)
