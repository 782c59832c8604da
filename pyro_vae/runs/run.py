"""A trained run as a Python object: :class:`Run`, a trained VAE with its settings and metrics, read back
from a run folder (:mod:`pyro_vae.runs.folder`) with :func:`load_run`: sample, reconstruct, evaluate, and the
latent-space tools.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pyro

from ..checkpoint import atomic_write, atomic_write_text, load_checkpoint
from ..config import Config, check_integer, check_path
from ..data.files import interpret_array
from ..errors import UserError
from ..train.build import build_vae, prepare_data, resolve_device
from ..user_code import check_code_trusted, is_import_spec, sha256_file, spec_file
from ..vae.evaluation import evaluate_terms, summarize
from ..vae.labels import LabelledVAE, SemiSupervisedVAE, check_labels, class_scores
from ..vae.model import VAE
from . import latent, plots
from .folder import check_same_settings, read_metrics, saved_config, write_file_checked

#: labels as the latent tools take them: one class index per item
Labels = torch.Tensor | np.ndarray | Sequence[int]

#: ``load_run(checkpoint=...)`` / ``--checkpoint``: the file of each choice
CHECKPOINTS = {"best": "best.pt", "last": "checkpoint.pt"}


class Run:
    """A trained VAE with its settings and metrics; returned by :func:`~pyro_vae.fit` and :func:`load_run`.

    :ivar Path directory: the run folder.
    :ivar Config config: the settings it was trained with.
    :ivar dict meta: ``config.json`` as saved (settings, data shape, package versions).
    :ivar vae: the :class:`~pyro_vae.vae.model.VAE`, in eval mode.
    :ivar list metrics: one dict per epoch, as in ``metrics.jsonl``.
    """

    def __init__(self, directory: str | os.PathLike, config: Config, meta: dict, vae: VAE,
                 metrics: list[dict]) -> None:
        self.directory = Path(directory)
        self.config, self.meta, self.vae, self.metrics = config, meta, vae.eval(), metrics
        #: ``final.json`` (test ELBO of best.pt and of the last epoch, best epoch), ``None`` if absent
        self.final = None
        #: which checkpoint the model is from: ``"best"`` or ``"last"``
        self.checkpoint = "last"
        #: the test items' labels, once :meth:`test_data` read them (class indices; ``None`` without labels)
        self.test_labels = None

    # How a run shows itself (a terminal, a Jupyter cell) ------------------------------------------
    def _summary(self):
        """``[(label, text)]``: the model, the data, the training and the test scores, for the reprs."""
        c = self.config
        net = f"{c.arch}, hidden {','.join(map(str, c.hidden))}, {c.activation}" if c.arch == "mlp" else c.arch
        rows = [
            ("model", f"{c.likelihood} VAE, z_dim={c.z_dim}, {net}; guide {c.guide}, objective {c.objective}"),
            ("data", f"{c.data or c.dataset}, items of shape {tuple(self.meta.get('item_shape') or self.image_shape)}"),
        ]
        trained = f"{len(self.metrics)} epochs" if self.metrics else "no epochs"
        if self.final and self.final.get("best_epoch") is not None:
            trained += f"; best epoch {self.final['best_epoch']} (valid ELBO {self.final['best_valid_elbo']:.3f})"
        rows.append(("trained", f"{trained}; weights of {CHECKPOINTS[self.checkpoint]}"))
        if self.final and self.final.get("test_elbo") is not None:
            rows.append(("test ELBO", f"{self.final['test_elbo']:.3f} nats/item (best.pt), "
                                      f"{self.final['test_elbo_last']:.3f} (last epoch)"))
        try:
            scores = json.loads((self.directory / "evaluation.json").read_text())
            rows.append(("evaluated", f"log p(x) >= {scores['test_log_likelihood']:.3f} nats, ELBO "
                                      f"{scores['test_elbo']:.3f} ({scores['samples']} importance samples, "
                                      f"{scores['items']} test items)"))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not evaluated yet (or a damaged file, which evaluate rewrites): nothing to show
        return rows

    def __repr__(self):
        rows = self._summary()
        width = max(len(label) for label, _ in rows)
        return f"Run({str(self.directory)!r})\n" + "\n".join(f"  {label:<{width}}  {text}" for label, text in rows)

    def _repr_html_(self):
        """Jupyter's view: the summary as a table and the run's pictures (embedded, so the notebook keeps them)."""
        import base64
        import html

        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
                        f"<td style='text-align:left'>{html.escape(text)}</td></tr>" for label, text in self._summary())
        pictures = ""
        for name in ("curves.png", "samples.png", "reconstructions.png", "manifold.png", "latents.png"):
            try:
                data = base64.b64encode((self.directory / name).read_bytes()).decode("ascii")
            except OSError:
                continue
            pictures += (f"<figure style='display:inline-block;margin:4px'><img src='data:image/png;base64,{data}' "
                         f"style='max-height:240px' alt='{name}'><figcaption>{name}</figcaption></figure>")
        return (f"<div><b>Run</b> <code>{html.escape(str(self.directory))}</code><table>{cells}</table>"
                f"{pictures}</div>")

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["image_shape"])

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def test_data(self) -> torch.Tensor:
        """The test set, prepared for the likelihood exactly as during training (same fixed draw).

        :raises UserError: when the run's data file (``config.json``'s ``data``/``test_data``) is
            gone, or now holds data of another width than the run was trained on.
        """
        for key in ("data", "test_data"):
            path = getattr(self.config, key)
            if path and not Path(path).exists():
                raise UserError(f"the run's data file {path} (recorded as {key} in {self.directory / 'config.json'}) "
                                "is missing; put it back there to evaluate the run")  # fmt: skip
        dataset, _, test = prepare_data(self.config, self.vae.likelihood, self.device)
        if test[0].numel() != self.vae.x_dim:
            raise UserError(f"the run's data now has {test[0].numel()} values per item but the run was trained on "
                            f"{self.vae.x_dim}; the data file changed since training")  # fmt: skip
        #: the test items' labels (class indices on the run's device; ``None`` when the data has none)
        self.test_labels = None if dataset.test_labels is None else dataset.test_labels.long().to(self.device)
        return test

    @property
    def labelled(self) -> bool:
        """Whether the model has labels (``--conditional`` or ``--semi-supervised``)."""
        return isinstance(self.vae, LabelledVAE)

    def _labels_for(self, x, labels, what="reconstruct"):
        """``labels`` checked for the items ``x`` of a model with labels (``None`` is fine for M2: its classifier's)."""
        if labels is None:
            if isinstance(self.vae, SemiSupervisedVAE):
                return None
            raise UserError(f"{what} on a --conditional run needs the items' labels")
        return check_labels(labels, self.vae.num_classes, len(x)).to(self.device)

    def sample(self, n: int = 64, seed: int = 0, label: int | None = None) -> torch.Tensor:
        """Decoder means for ``n`` draws from the prior, items in the data's shape ``(n, *item_shape)``, on the CPU; for a model with labels,
        of the class ``label`` (default: the classes in turn).

        :raises UserError: unless ``n`` is a positive integer and ``seed`` an integer in ``[0, 2**64)``; for a
            ``label`` out of range, or given to a model without labels.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"the number of samples must be a positive integer, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise UserError(f"the seed must be an integer from 0 to 2**64 - 1, got {seed!r}")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        if label is not None and not self.labelled:
            raise UserError("--label applies to runs with labels (trained with --conditional or --semi-supervised)")
        vae = self.vae
        samples = vae.sample(n, generator=generator, label=label) if isinstance(vae, LabelledVAE) else vae.sample(
            n, generator=generator)
        return samples.cpu().reshape(n, *self.vae.x_shape)

    def as_input(self, x: torch.Tensor | np.ndarray | Sequence) -> torch.Tensor:
        """``x`` as the encoder takes it: a float tensor ``(N, *item_shape)`` on the run's device.

        Accepts what training accepted: items in any layout whose values number ``D`` (``(N, D)``,
        ``(N, H, W)``, ``(N, C, H, W)``, ...). A NumPy array is read by the rules of ``--data``
        (:func:`~pyro_vae.data.files.interpret_array`: uint8 ``0..255`` scaled to ``[0, 1]``, 0/1
        integers as binary); a tensor of an integer dtype likewise; a float tensor is taken as it is
        (values as the run's prepared data, e.g. in ``[0, 1]``). One item may be given without the
        leading ``N``.

        :raises UserError: for another number of values per item, or values the rules refuse.
        """
        d = self.vae.x_dim
        shape = tuple(getattr(x, "shape", ()))
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            t = x.detach()
        else:
            array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            if array.dtype.kind not in "biuf":
                raise UserError(f"the run takes numeric arrays, got dtype {array.dtype}")
            if array.ndim >= 1 and array.size == d and (array.ndim == 1 or array.shape[0] != 1):
                array = array[None]
            if array.ndim < 2 or array.shape[0] == 0:
                raise UserError(f"the run takes items of {d} values, shape (N, {d}) or (N, *{self.image_shape}); "
                                f"got shape {shape}")  # fmt: skip
            if array.dtype.kind == "f":
                t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            else:
                t = interpret_array(array, "input")[0]
        if t.dim() >= 1 and t.numel() == d and (t.dim() == 1 or t.shape[0] != 1):
            t = t.reshape(1, d)
        if t.dim() < 2 or t.shape[0] == 0 or t[0].numel() != d:
            raise UserError(f"the run takes items of {d} values, shape (N, {d}) or (N, *{self.image_shape}); "
                            f"got shape {shape}")  # fmt: skip
        return t.reshape(len(t), *self.vae.x_shape).to(device=self.device, dtype=torch.float32)

    def reconstruct(self, x: torch.Tensor | np.ndarray | Sequence, labels: Labels | None = None) -> torch.Tensor:
        """Decoder means for one draw from :math:`q(z \\mid x)` for each item of ``x``, items in the data's
        shape ``(N, *item_shape)`` (as :meth:`sample`), on the CPU.

        ``x`` in any layout and dtype training accepts (see :meth:`as_input`). A ``--conditional`` run needs
        the items' ``labels``; a ``--semi-supervised`` one uses them if given, else its classifier's classes;
        each item is decoded with the label it was encoded with.

        :raises UserError: labels missing (``--conditional``), out of range or not one per item; labels given to
            a run without labels.
        """
        x = self.as_input(x)
        if labels is not None and not self.labelled:
            raise UserError("labels apply to runs with labels (--conditional, --semi-supervised); this run's "
                            "guide is q(z | x)")  # fmt: skip
        vae = self.vae
        means = vae.reconstruct(x, self._labels_for(x, labels)) if isinstance(vae, LabelledVAE) else vae.reconstruct(x)
        return means.cpu().reshape(len(x), *self.vae.x_shape)

    def evaluate(self, samples: int = 1000, subset: int | None = None, progress: Callable[[int], Any] | None = None,
                 seed: int | None = None) -> dict[str, Any]:
        """Test ELBO, its two terms, importance-sampled log-likelihood (nats per item), bits per
        dimension and active units (see :mod:`pyro_vae.vae.evaluation`).

        :param int samples: importance samples ``K`` per item.
        :param int subset: use only the first ``subset`` test items.
        :param int seed: seeds the draws of :math:`z` (the same seed gives the same numbers; the
            global random state is left as it was). ``None``: the current random state.
        :returns: dict with ``test_elbo``, ``test_log_likelihood``, ``samples``, ``items``,
            ``reconstruction``, ``kl``, ``bits_per_dim``, ``active_units`` and the other keys of
            :func:`~pyro_vae.vae.evaluation.summarize`.
        """
        samples = check_integer(samples, "--samples", 1)
        subset = None if subset is None else check_integer(subset, "--subset", 1)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
            raise UserError(f"--seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
        x = self.test_data()
        if subset is not None:
            x = x[:subset]
        if self.labelled:
            return self._evaluate_labelled(x, samples, progress, seed)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext():
            if seed is not None:
                pyro.set_rng_seed(seed)
            scores = evaluate_terms(self.vae, x, num_samples=samples, progress=progress)
        return summarize(scores, self.vae.likelihood, math.prod(x.shape[1:]))

    def _evaluate_labelled(self, x, samples, progress, seed):
        """:meth:`evaluate` for a model with labels: ``test_elbo`` and ``test_log_likelihood`` (of
        :math:`\\log p(x \\mid y)` for ``--conditional``; of :math:`\\log p(x)` with :math:`y` summed out for
        ``--semi-supervised``, which adds ``test_error``, the classification error of :math:`q(y \\mid x)`),
        :func:`~pyro_vae.vae.labels.class_scores`; the other keys of :meth:`evaluate` are ``None``."""
        labels = self.test_labels
        if labels is None:
            raise UserError("the run's test items have no labels now; the data changed since training")
        labels = labels[: len(x)]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext():
            if seed is not None:
                pyro.set_rng_seed(seed)
            scores = class_scores(self.vae, x, labels, num_samples=samples)
        if progress is not None:
            progress(len(x))
        n = len(x)
        return {
            "test_elbo": scores["elbo"].mean().item(),
            "test_log_likelihood": scores["log_px"].mean().item(),
            "log_likelihood_of": "log p(x | y)" if self.config.conditional else "log p(x), y summed out",
            "test_error": 1.0 - scores["correct"].mean().item() if "correct" in scores else None,
            "log_likelihood_sem": scores["log_px"].std().item() / math.sqrt(n) if n > 1 else None,
            "samples": samples, "items": n, "reconstruction": None, "kl": None, "bits_per_dim": None,
            "active_units": None, "num_classes": self.vae.num_classes,
        }  # fmt: skip

    # Pictures ------------------------------------------------------------------------------------
    def _display_range(self):
        """[0, 1] for images; the data's own range for real-valued user data."""
        return (0.0, 1.0) if self.vae.likelihood.domain != "real" or not self.config.data else None

    def save_samples(self, path: str | os.PathLike, n: int = 64, seed: int = 0, label: int | None = None) -> None:
        """Save ``n`` samples as a PNG grid at ``path``. For a model with labels and no ``label``: one row per
        class, the same code ``z`` down each column (``ceil(n / C)`` columns; Kingma et al. 2014, Figure 1).

        :raises UserError: for a missing folder, a link at ``path``, or a write that fails.
        """
        ncol, title = None, None
        vae = self.vae
        if isinstance(vae, LabelledVAE) and label is None:
            columns = max(1, -(-n // vae.num_classes))
            generator = torch.Generator(device=self.device).manual_seed(seed)
            images, ncol = vae.class_grid(columns, generator=generator).cpu(), columns
            title = "one row per class (0 at the top), the same z down each column"
        else:
            images = self.sample(n, seed, label)
        parent = Path(path).parent
        if not parent.is_dir():
            raise UserError(f"cannot write {path}: the folder {parent} does not exist")
        write_file_checked(Path(path), lambda p: plots.save_grid(images, self.image_shape, p, ncol=ncol, title=title,
                                                                  value_range=self._display_range()), "samples")

    def write_pictures(self, test: torch.Tensor, checkpoint: str = "best",
                       test_labels: torch.Tensor | None = None) -> dict[str, Any]:
        """``samples.png``, ``reconstructions.png``, ``curves.png`` and, for a 2-D latent space, ``manifold.png``
        in the run folder, drawn with the model of one of its checkpoints. A run with labels draws no
        ``manifold.png`` but ``latents.png``: the means of :math:`q(z \\mid x, y)` of the test items with their
        labels, coloured by label (what ``pyro-vae latents RUN`` draws); its ``samples.png`` has one row per
        class, the same :math:`z` down each column (:meth:`save_samples`).

        :param test: the prepared test items (their first 16 are reconstructed).
        :param test_labels: the labels of ``test``, for a run with labels (the reconstructions and ``latents.png``
            use them; without them, a ``--semi-supervised`` run uses its classifier's classes and a
            ``--conditional`` one draws neither).
        :param str checkpoint: ``"best"`` (default): ``best.pt``, the model that ``final.json``'s
            ``test_elbo`` scores and that ``evaluate``, ``sample``, ``encode`` and :func:`load_run` use by
            default, so ``samples.png`` is what ``pyro-vae sample RUN`` (``-n 64 --seed 0``) draws; a run
            without ``best.pt`` (``epochs=0``) uses ``checkpoint.pt``. ``"last"``: ``checkpoint.pt``.
            :attr:`vae` is given that checkpoint's weights while drawing and its own back afterwards.
        :returns: which model they show, ``{"checkpoint": "best.pt", "epoch": N}``. It is written into the
            title of ``reconstructions.png`` and, when the run has a ``final.json`` (:attr:`final`), into it
            as ``"pictures"`` (``samples.png`` stays untitled, pixel for pixel what ``pyro-vae sample``
            writes; ``manifold.png`` keeps the paper's untitled grid).
        :raises UserError: for an unknown ``checkpoint``, a missing or damaged checkpoint file, an unwritable folder.
        """
        if checkpoint not in CHECKPOINTS:
            raise UserError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
        path = self.directory / CHECKPOINTS[checkpoint]
        if checkpoint == "best" and not path.exists():
            path = self.directory / "checkpoint.pt"  # no epoch run, or a run from before best.pt
        state = load_checkpoint(path, map_location=self.device)
        shown = {"checkpoint": path.name, "epoch": int(state["epoch"])}
        own = {k: v.detach().clone() for k, v in self.vae.state_dict().items()}
        try:
            self.vae.load_state_dict(state["model"])
        except RuntimeError:
            raise UserError(f"{path} does not fit the run's model (another configuration)") from None
        try:
            self._draw_pictures(test, f"{shown['checkpoint']}, epoch {shown['epoch']}", test_labels)
        finally:
            self.vae.load_state_dict(own)
        if isinstance(self.final, dict) and (self.directory / "final.json").exists():
            self.final["pictures"] = shown
            write_file_checked(self.directory / "final.json",
                               lambda p: atomic_write_text(p, json.dumps(self.final, indent=2) + "\n"), "final.json")
        return shown

    def _draw_pictures(self, test, label, test_labels=None):
        """The pictures of :meth:`write_pictures` with the model :attr:`vae` holds now; ``label`` names it."""
        d = self.directory
        torch.manual_seed(self.config.seed)
        self.save_samples(d / "samples.png", n=80 if self.labelled else 64)
        x = test[:16]
        labels = None if test_labels is None or not self.labelled else test_labels[:16]
        # a --conditional run given no test labels has nothing it can encode: no reconstructions, no latents
        encodes = not self.labelled or labels is not None or isinstance(self.vae, SemiSupervisedVAE)
        if encodes:
            recon = self.reconstruct(x, labels) if self.labelled else self.reconstruct(x)
            pairs = torch.cat([x.cpu().reshape(len(x), -1), recon.reshape(len(x), -1)])
            title = f"test inputs (top) and reconstructions (bottom); {label}"
            write_file_checked(d / "reconstructions.png", lambda p: plots.save_grid(
                pairs, self.image_shape, p, ncol=len(x), title=title, value_range=self._display_range()), "picture")
        if self.metrics:
            curves_title = f"{self.config.likelihood} VAE on {self.config.dataset}"
            write_file_checked(d / "curves.png", lambda p: plots.save_curves(self.metrics, p, title=curves_title),
                               "picture")  # fmt: skip
        if self.config.z_dim == 2 and not self.labelled:
            z, caption = plots.prior_manifold_codes(self.vae.prior_module, 20, device=self.device)
            write_file_checked(d / "manifold.png", lambda p: plots.save_grid(
                self.vae.decode(z), self.image_shape, p, ncol=20, title=caption, value_range=self._display_range()),
                "picture")  # fmt: skip
        if self.labelled and encodes:
            y = latent.guide_labels(self.vae, test, test_labels)
            z = latent.encode(self.vae, test, "mean", labels=y)
            source = "the test labels" if test_labels is not None else "the classifier's most probable class"
            write_file_checked(d / "latents.png", lambda p: latent.latent_scatter(
                z, y.cpu().numpy(), p, seed=self.config.seed, note=f"q(z|x,y) of the test set;\ny and colour: {source}; {label}"),
                "picture")  # fmt: skip
        if hasattr(self.vae.prior_module, "pseudo_inputs"):
            self.save_pseudo_inputs(d / "pseudo_inputs.png")

    def save_pseudo_inputs(self, path: str | os.PathLike, n: int = 100) -> None:
        """The first ``n`` pseudo-inputs :math:`u_k` of a VampPrior as a PNG grid, in the data's shape.

        :raises UserError: for a run whose prior has no pseudo-inputs, or a write that fails.
        """
        prior = self.vae.prior_module
        if not hasattr(prior, "pseudo_inputs"):
            raise UserError(f"the run's prior ({prior.describe()}) has no pseudo-inputs")
        with torch.no_grad():
            u = prior.pseudo_inputs()[:n].detach().float().cpu().reshape(min(n, len(prior.pseudo)), -1)
        title = f"pseudo-inputs ({len(u)} of {len(prior.pseudo)})"
        write_file_checked(Path(path), lambda p: plots.save_grid(u, self.image_shape, p, title=title,
                                                                  value_range=self._display_range()), "picture")

    # The latent space (pyro_vae.runs.latent; the same as ``pyro-vae encode/reconstruct/interpolate/traverse/latents``)
    def encode(self, x: torch.Tensor | np.ndarray | Sequence | None = None, split: str = "test",
               data: str | os.PathLike | None = None, what: str = "mean", samples: int | None = None,
               labels: Labels | str | os.PathLike | None = None, path: str | os.PathLike | None = None, seed: int = 0,
               use_classifier: bool = False) -> torch.Tensor:  # fmt: skip
        """Posterior codes of the items ``x`` (any layout and dtype training accepts, see :meth:`as_input`),
        or, without ``x``, of a split's (``split``) or ``data`` file's items.

        A run with labels encodes with :math:`q(z \\mid x, y)`: a ``--conditional`` run needs the items' labels
        (the split's or the data file's own, or ``labels``: an array, or a ``.npy`` file for a split or file); a
        ``--semi-supervised`` run uses them when there are any, else (and always with ``use_classifier``) its
        classifier's most probable class (:func:`pyro_vae.runs.latent.run_labels`).

        :returns: always a float tensor on the CPU: posterior means, scales (``what="scale"``), both
            ``(N, z_dim)``, or draws (``what="samples"``), ``(N, K, z_dim)``. With ``path`` (``.npy`` or
            ``.csv``) the codes are also saved, with labels beside them (the split's; for a run with labels, the
            labels its guide was given); the labels themselves: :func:`pyro_vae.runs.latent.encode_run`, which
            returns ``(codes, labels)``.
        :raises UserError: as :func:`pyro_vae.runs.latent.encode_run`; labels missing for a ``--conditional`` run,
            out of range, or not one per item.
        """
        if x is not None:
            if path is not None:
                raise UserError("encode saves the codes of a split or a data file (path=...), not of given items")
            x = self.as_input(x)
            if labels is not None and not self.labelled:
                raise UserError("labels apply to runs with labels (--conditional, --semi-supervised); this run's "
                                "guide is q(z | x)")  # fmt: skip
            y, _ = latent.run_labels(self, x, labels, "x", None if labels is None else "the labels given",
                                     use_classifier, "encode")  # fmt: skip
            return torch.as_tensor(latent.encode(self.vae, x, what, samples=samples, seed=seed, labels=y))
        codes, _ = latent.encode_run(self, split, data, what, samples, labels, path, seed, use_classifier)
        return torch.as_tensor(codes)

    def save_reconstructions(self, path: str | os.PathLike, n: int = 16, split: str = "test",
                             data: str | os.PathLike | None = None, sample: bool = False, seed: int = 0,
                             labels: Labels | str | os.PathLike | None = None,
                             use_classifier: bool = False) -> np.ndarray:  # fmt: skip
        """Items above their reconstructions as a PNG: :func:`pyro_vae.runs.latent.save_reconstructions`."""
        return latent.save_reconstructions(self, path, n, split, data, sample, seed, labels, use_classifier)

    def interpolate(self, i: int, j: int, steps: int = 10, slerp: bool = False, split: str = "test",
                    data: str | os.PathLike | None = None, path: str | os.PathLike | None = None, seed: int = 0,
                    label: int | None = None, labels: Labels | str | os.PathLike | None = None,
                    use_classifier: bool = False) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Decoded path between items ``i`` and ``j``: :func:`pyro_vae.runs.latent.interpolate_run` (a run with
        labels: each item encoded with its label, the path decoded with the class ``label``, default theirs)."""
        return latent.interpolate_run(self, i, j, steps, slerp, split, data, path, seed, label, labels,
                                      use_classifier)  # fmt: skip

    def traverse(self, units: Sequence[int] | None = None, span: float = 3.0, steps: int = 9, item: int | None = None,
                 top: int | None = None, split: str = "test", data: str | os.PathLike | None = None,
                 path: str | os.PathLike | None = None, seed: int = 0, label: int | None = None,
                 labels: Labels | str | os.PathLike | None = None,
                 use_classifier: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """One latent unit at a time, ordered by KL: :func:`pyro_vae.runs.latent.traverse_run` (a run with labels:
        decoded with the class ``label``, default ``item``'s label, and without either with every class)."""
        return latent.traverse_run(self, units, span, steps, item, top, split, data, path, seed, label, labels,
                                   use_classifier)  # fmt: skip

    def latents(self, path: str | os.PathLike, method: str = "auto", split: str = "test",
                data: str | os.PathLike | None = None, labels: Labels | str | os.PathLike | None = None, seed: int = 0,
                use_classifier: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Scatter of the posterior means coloured by label: :func:`pyro_vae.runs.latent.latents_run`."""
        return latent.latents_run(self, path, method, split, data, labels, seed, use_classifier=use_classifier)


#: the parts a config may give as code (``file.py:Name``), and the file of the run folder that keeps a copy of each
CODE_PARTS = {"guide": "guide_code.py", "arch": "arch_code.py", "likelihood": "likelihood_code.py"}
#: how each part is named in messages, its registry and the name users import it by
_PART_KINDS = {"guide": ("guide", "GUIDES"), "arch": ("architecture", "ARCHITECTURES"),
               "likelihood": ("likelihood", "LIKELIHOODS")}  # fmt: skip


def _registry(part):
    from ..vae.guides import GUIDES
    from ..vae.likelihoods import LIKELIHOODS
    from ..vae.nets import ARCHITECTURES

    return {"guide": GUIDES, "arch": ARCHITECTURES, "likelihood": LIKELIHOODS}[part]


def record_parts(config, folder, saved=None):
    """Make a run folder self-contained: what ``config.json`` records about the parts given as code or
    registered in Python.

    - A part given as a file (``--guide my.py:Name``, ``--arch``, ``--likelihood``) is copied into ``folder``
      (:data:`CODE_PARTS`, e.g. ``guide_code.py``) and recorded under ``"code"`` with its sha256; :func:`load_run`
      runs that copy (only when trusted), after checking the hash, so the folder opens on another machine.
      A ``package.module:Name`` part is recorded, not copied: it must be importable where the run is opened.
    - A part named by a name registered outside pyro-vae (``GUIDES.register("mine", MyGuide)`` in a notebook)
      is recorded under ``"registered"`` with its class, so that opening the run in a process that has not
      registered it says what to register.

    ``saved``: the ``config.json`` of the run being resumed (its records are kept as they are).
    :returns: ``{"code": {...}, "registered": {...}}`` to add to ``config.json``.
    """
    if saved is not None:
        return {k: saved[k] for k in ("code", "registered") if isinstance(saved.get(k), dict)}
    code, registered = {}, {}
    for part, filename in CODE_PARTS.items():
        spec = getattr(config, part)
        if not isinstance(spec, str):
            continue
        if is_import_spec(spec) and spec not in _registry(part):
            located = spec_file(spec)
            if located is None:
                code[part] = {"spec": spec, "module": spec.rpartition(":")[0], "name": spec.rpartition(":")[2]}
                continue
            source, name = located
            data = source.read_bytes()
            target = Path(folder) / filename
            atomic_write(target, lambda f: f.write(data))
            code[part] = {"spec": spec, "file": filename, "name": name, "sha256": sha256_file(target)}
        elif spec in _registry(part):
            cls = _registry(part).get(spec)
            module = getattr(cls, "__module__", "") or ""
            if not module.startswith("pyro_vae."):
                registered[part] = {"name": spec, "class": f"{module}.{getattr(cls, '__qualname__', cls)}"}
    return {"code": code, "registered": registered}


def check_guide_trusted(config, directory, trust_guide=False, guide=None, arch=None):
    """Refuse to run code a run folder names as its guide or architecture unless the user allows it.

    A guide or architecture given as ``file.py:Name`` or ``module:Name`` is Python code that runs when
    the model is built. A run folder received from someone else could name any file or module; opening
    it (:func:`load_run`, ``evaluate``, ``sample``, the latent commands) runs that code only when
    ``trust_guide`` is true or the user names the same code again (``guide``, ``arch``: ``--guide`` /
    ``--arch`` on the command line). The rule is :func:`pyro_vae.user_code.check_code_trusted`'s.

    :raises UserError: one line, saying how to allow it.
    """
    named = {k: v for k, v in (("guide", guide), ("arch", arch)) if v is not None}
    check_code_trusted(config, f"the run in {directory}", trust_guide, named)


def _buildable(config, meta, directory):
    """``config`` with each part given as a file replaced by the run folder's copy (checked against its
    sha256), and each registered name checked: the config :func:`load_run` builds the model from.

    :raises UserError: a copy that is missing or was altered since training; a name no longer registered.
    """
    changes = {}
    code = meta.get("code") if isinstance(meta.get("code"), dict) else {}
    for part, entry in code.items():
        if part not in CODE_PARTS or not isinstance(entry, dict) or "file" not in entry:
            continue
        if entry.get("spec") != getattr(config, part):
            continue  # a record of another spec: not this part's code
        path = Path(directory) / str(entry["file"])
        if path.name != CODE_PARTS[part] or path.is_symlink() or not path.is_file():
            raise UserError(f"the run in {directory} keeps its {_PART_KINDS[part][0]} code in {CODE_PARTS[part]}, "
                            "which is missing; the run folder is incomplete")  # fmt: skip
        if sha256_file(path) != entry.get("sha256"):
            raise UserError(f"{path} was altered since training (its sha256 differs from the one in config.json); "
                            "refusing to run it")  # fmt: skip
        changes[part] = f"{path.resolve()}:{entry['name']}"
    registered = meta.get("registered") if isinstance(meta.get("registered"), dict) else {}
    for part, (kind, registry_name) in _PART_KINDS.items():
        spec = getattr(config, part)
        if part in changes or not isinstance(spec, str) or is_import_spec(spec) or spec in _registry(part):
            continue
        entry = registered.get(part) if isinstance(registered.get(part), dict) else {}
        cls = str(entry.get("class") or "YourClass")
        where = f", registered in Python as {cls}" if entry.get("class") else ", registered in Python"
        raise UserError(
            f"the run in {directory} uses the {kind} {spec!r}{where}; register it before opening the run: "
            f"pyro_vae.{registry_name}.register({spec!r}, {cls.rpartition('.')[2]})"
        )
    return config.replace(**changes) if changes else config


def load_run(directory: str | os.PathLike, device: str = "auto", checkpoint: str = "best", trust_guide: bool = False,
             guide: str | type | None = None, arch: str | type | None = None) -> Run:
    """Load the run in ``directory`` (its ``config.json`` and a checkpoint) onto ``device``.

    :param device: ``"auto"`` (CUDA when available, else the CPU, whatever the run was trained on),
        ``"cpu"`` or ``"cuda"``. Checkpoints are read onto that device, so a run trained on a GPU
        opens on a machine without one.
    :param str checkpoint: ``"best"`` (default): ``best.pt``, the epoch with the best validation
        ELBO; ``"last"``: ``checkpoint.pt``, the last epoch. A run written before ``best.pt``
        existed falls back to ``checkpoint.pt``.
    :param bool trust_guide: allow running the code a run names as its guide, architecture or likelihood
        (``file.py:Name`` or ``module:Name``); see :func:`check_guide_trusted`. ``guide``, ``arch``: the
        same spec, named again (``--guide``, ``--arch``). A part given as a file runs from the run folder's copy (``guide_code.py``, ...),
        checked against the sha256 ``config.json`` records (:func:`record_parts`), so the folder opens
        on another machine.
    :raises UserError: for an unknown ``checkpoint``, a folder that is not a run, a damaged ``config.json`` or checkpoint,
        untrusted code, a copied part altered since training, or a part registered in Python and not registered now.
    """
    if not isinstance(checkpoint, str) or checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    directory = Path(check_path(directory, "the run folder"))
    if not (directory / "config.json").exists():
        raise UserError(f"{directory} is not a pyro-vae run folder (no config.json)")
    where = directory / "config.json"
    try:
        meta = json.loads(where.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"it holds a JSON {type(meta).__name__}, not an object")
        config = Config.from_dict(meta)
        x_dim, n_test = int(meta["x_dim"]), int(meta["n_test"])
        item = tuple(int(v) for v in meta["item_shape"]) if meta.get("item_shape") else x_dim  # images keep their shape
        image_shape = [int(v) for v in meta["image_shape"]]
        levels = meta.get("levels")
        if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 2):
            raise ValueError(f"levels must be a whole number of at least 2 or null, got {levels!r}")
        if x_dim < 1 or n_test < 1 or int(np.prod(image_shape)) != x_dim:
            raise ValueError(f"image_shape {image_shape} does not hold x_dim = {x_dim} values")
    except OSError as e:
        raise UserError(f"cannot read {where}: {e.strerror or e}") from None
    except UserError as e:
        raise UserError(f"{where} is damaged ({e})") from None
    except (ValueError, KeyError, TypeError, OverflowError) as e:
        raise UserError(f"{where} is damaged ({type(e).__name__}: {e}); retrain the run") from None
    check_guide_trusted(config, directory, trust_guide, guide, arch)
    on = resolve_device(device or "auto")
    path = directory / CHECKPOINTS[checkpoint]
    if checkpoint == "best" and not path.exists() and (directory / "checkpoint.pt").exists():
        path = directory / "checkpoint.pt"  # a run from before best.pt
    state = load_checkpoint(path, map_location=on)
    other = directory / ("checkpoint.pt" if path.name == "best.pt" else "best.pt")
    if other.exists():  # a damaged run folder is refused whole, even when the checkpoint used is intact
        load_checkpoint(other)
    check_same_settings(saved_config(state, directory), config,
                        f"the checkpoint in {directory} is from another configuration than its config.json")
    classes = meta.get("num_classes")
    if (config.conditional or config.semi_supervised) and (isinstance(classes, bool) or not isinstance(classes, int)):
        raise UserError(f"{where} is damaged (a run with labels needs its num_classes, got {classes!r}); retrain the run")
    vae = build_vae(_buildable(config, meta, directory), item, levels, num_classes=classes).to(on)
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError:
        raise UserError(f"the checkpoint in {directory} does not fit the model its config.json describes") from None
    metrics = read_metrics(directory / "metrics.jsonl")
    run = Run(directory, config, meta, vae, metrics)
    run.checkpoint = "best" if path.name == "best.pt" else "last"
    if (directory / "final.json").exists():
        try:
            run.final = json.loads((directory / "final.json").read_text())
        except ValueError:
            raise UserError(f"{directory / 'final.json'} is damaged") from None
    return run


def use_best(run, best_state=None):
    """Put the best epoch's model into ``run`` (the one :func:`fit` just trained), as :func:`load_run` opens
    it by default: ``best_state`` (a state dict held in memory) or else ``best.pt``; a run without
    ``best.pt`` (no epochs) keeps its last model. Sets ``run.checkpoint``."""
    final = run.final or {}
    if final.get("best_epoch") is None or final.get("best_epoch") == final.get("epochs"):
        run.checkpoint = "best" if (run.directory / "best.pt").exists() else "last"
        return run
    if best_state is None:
        best_state = load_checkpoint(run.directory / "best.pt", map_location=run.device)["model"]
    run.vae.load_state_dict(best_state)
    run.vae.eval()
    run.checkpoint = "best"
    return run


def write_evaluation(run, result):
    """Write ``evaluation.json`` into the run folder (atomically, never through a link).

    :raises UserError: when it cannot be written (a read-only folder, a full disk), one line.
    """
    path = run.directory / "evaluation.json"
    try:
        atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
