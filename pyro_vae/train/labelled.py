r"""Training the models with labels (:mod:`pyro_vae.vae.labels`): ``fit --conditional`` and ``fit --semi-supervised``.

:class:`LabelledTrainer` is the :class:`~pyro_vae.train.trainer.Trainer` that :func:`~pyro_vae.runs.fit.fit` builds
for a config with ``conditional`` or ``semi_supervised`` set (:func:`trainer_class`); the run folder, checkpoints,
``--resume`` and the pictures are ``fit``'s. Its steps run on Pyro's own path, :meth:`pyro.infer.SVI.step` with the run's optimizer (the fast
captured step of :mod:`pyro_vae.speed` handles the plain ``Trace_ELBO`` of one minibatch tensor only).

**Conditional.** Each step is one minibatch of items with their labels, the loss the run's objective
(``--objective``, ``--particles``, KL weighting) on :math:`p(z)\,p_\theta(x \mid z, y)` and
:math:`q_\phi(z \mid x, y)`.

**Semi-supervised (M2).** ``--labelled N`` training items keep their labels: ``N / C`` of each class (the
first ``N mod C`` classes one more), drawn with the seed ``--seed`` + :data:`LABELLED_SEED` and recorded in
``config.json`` (``labelled_items``, indices into the training split, which excludes the validation items);
every other training item is used without its label. **Mixing.** As in the paper, every minibatch holds
both kinds: each step takes the next ``--batch-size`` unlabelled items (an epoch is one pass over them) and
``min(--batch-size, N)`` labelled items, taken in turn from a fresh random order of the ``N`` each epoch
(so the few labelled items are seen many times an epoch). The step's loss is eq. 9 of Kingma et al. (2014),
:meth:`~pyro_vae.vae.labels.SemiSupervisedVAE.training_model` under
:func:`~pyro_vae.vae.labels.enumerated_elbo` (``TraceEnum_ELBO``, the unlabelled ``y`` enumerated in parallel).
The epoch's ``train_elbo`` is then minus that loss per unlabelled item (it includes the labelled terms and
:math:`\alpha`); ``valid_elbo`` is :math:`\mathcal{U}(x)` with :math:`y` summed out, and ``valid_error`` the
classification error of :math:`q_\phi(y \mid x)` on the validation items; ``final.json`` adds ``test_error``
(of ``best.pt``, the epoch with the best validation ELBO) and ``test_error_last``.

Random draws happen only through torch's generators, which checkpoints keep, and the labelled order
restarts each epoch: ``--resume`` continues exactly as an uninterrupted run.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from ..config import Config
from ..errors import UserError
from ..speed import Speed, SVIStep
from ..vae.labels import class_scores, enumerated_elbo
from .build import labels_flag, make_config
from .trainer import Trainer

__all__ = ["LABELLED_SEED", "LabelledTrainer", "DEFAULT_LABELLED", "draw_labelled", "trainer_class"]

#: Seed offset of the draw of the labelled items of a semi-supervised run.
LABELLED_SEED = 30_011
#: ``--labelled`` when not given: the paper's smallest setting (MNIST, 100 labels)
DEFAULT_LABELLED = 100


def draw_labelled(labels, num_classes, n, seed):
    """Indices of ``n`` items balanced over the classes (``n // C`` each, the first ``n % C`` classes one
    more), drawn from ``labels`` (``(N,)`` class indices) with a generator seeded ``seed``; sorted.

    :raises UserError: for fewer than one item per class, or a class with too few items.
    """
    if n < num_classes:
        raise UserError(f"--labelled {n} is fewer than one labelled item per class ({num_classes} classes)")
    if n > len(labels):
        raise UserError(f"--labelled {n} is more than the {len(labels)} training items")
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    chosen = []
    for c in range(num_classes):
        want = n // num_classes + (1 if c < n % num_classes else 0)
        members = (labels == c).nonzero().flatten()
        if len(members) < want:
            raise UserError(f"--labelled {n} needs {want} items of class {c}, but the training items hold "
                            f"{len(members)}")  # fmt: skip
        chosen.append(members[torch.randperm(len(members), generator=generator)[:want]])
    return torch.cat(chosen).sort().values


class LabelledTrainer(Trainer):
    """A :class:`~pyro_vae.train.trainer.Trainer` for ``--conditional`` and ``--semi-supervised`` runs (see the module).

    :raises UserError: for combinations that cannot work: an objective other than ``elbo`` or KL weighting
        with ``--semi-supervised`` (``TraceEnum_ELBO`` enumerates ``y``; the other estimators cannot), data
        without labels, a ``--labelled`` count the classes cannot be balanced to.
    """

    def __init__(self, config: Config | None = None, speed: Speed | None = None, **settings: Any) -> None:
        config = make_config(config, **settings)
        if config.semi_supervised:
            if config.objective != "elbo":
                raise UserError(f"--semi-supervised sums the label out with TraceEnum_ELBO, which --objective "
                                f"{config.objective} cannot do; use --objective elbo")  # fmt: skip
            if config.beta != 1 or config.kl_warmup or config.free_bits:
                raise UserError("--beta, --kl-warmup and --free-bits do not apply to --semi-supervised (its bound "
                                "weighs the label and z together); leave them out")  # fmt: skip
        speed = (speed or Speed()).replace(optimizer="pyro", capture=False, compile=None, experimental_cuda_graph=False)
        super().__init__(config, speed=speed)
        dataset, vae, device = self.dataset, self.vae, self.device
        self.num_classes = vae.num_classes
        #: the labels of the training, validation and test items (class indices, on the device)
        self.train_labels = dataset.labels.long().to(device)
        self.valid_labels = None if dataset.valid_labels is None else dataset.valid_labels.long().to(device)
        self.test_labels = dataset.test_labels.long().to(device)
        self.labelled = self.unlabelled = None
        if self.config.semi_supervised:
            n = self.config.labelled if self.config.labelled is not None else DEFAULT_LABELLED
            #: the labelled training items (indices into the training split) and the others
            self.labelled = draw_labelled(self.train_labels, self.num_classes, n,
                                          self.config.seed + LABELLED_SEED).to(device)  # fmt: skip
            mask = torch.ones(len(self.train), dtype=torch.bool, device=device)
            mask[self.labelled] = False
            self.unlabelled = mask.nonzero().flatten()
            if not len(self.unlabelled):
                raise UserError(f"--labelled {n} labels every training item: nothing is left unlabelled (use "
                                "--conditional, or fewer --labelled)")  # fmt: skip
            model = lambda batch: vae.training_model(*batch)  # noqa: E731
            guide = lambda batch: vae.training_guide(*batch)  # noqa: E731
            self.step = SVIStep(model, guide, enumerated_elbo(self.config.particles), self.optimizer, self.speed)
        else:
            model, guide = self.kl.wrap(lambda batch: vae.model(*batch), lambda batch: vae.guide(*batch))
            self.step = SVIStep(model, guide, self.kl.build_loss(self.objective), self.optimizer, self.speed,
                                to_scalar=self.objective.training_loss)  # fmt: skip
        #: the classification errors of the last validation and of each scoring of the test set
        self._valid_error: float | None = None
        self._test_errors: list[float | None] = []

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.unlabelled) if self.unlabelled is not None else len(self.train)
        return -(-n // self.config.batch_size)

    def _steps(self):
        """The epoch's steps: ``(batch, items)``, ``batch`` the step's arguments, ``items`` its unlabelled (or, for
        the conditional model, its) items."""
        size, device, prepare = self.config.batch_size, self.device, self.vae.likelihood.prepare_batch
        if self.unlabelled is None:
            order = torch.randperm(len(self.train), device=device)
            for start in range(0, len(order), size):
                index = order[start : start + size]
                yield (prepare(self.train[index]), self.train_labels[index]), len(index)
            return
        order = self.unlabelled[torch.randperm(len(self.unlabelled), device=device)]
        labelled = self.labelled[torch.randperm(len(self.labelled), device=device)]
        per_step = min(size, len(labelled))
        for step, start in enumerate(range(0, len(order), size)):
            index = order[start : start + size]
            held = labelled[(torch.arange(per_step, device=device) + step * per_step) % len(labelled)]
            yield (prepare(self.train[index]), prepare(self.train[held]), self.train_labels[held]), len(index)

    def train_epoch(self, progress: Callable[[int, torch.Tensor], object] | None = None) -> dict[str, float]:
        """One pass over the training items (unlabelled ones for ``--semi-supervised``); see :meth:`Trainer.train_epoch`."""
        epoch = self.epoch + 1
        self.vae.train()
        t0 = time.perf_counter()
        step_losses, n = [], 0
        with self._own_params():
            for step, (batch, items) in enumerate(self._steps(), start=1):
                kl_weight = self.kl.update(epoch, step, self.steps_per_epoch)
                lr = self.schedule.apply(self.step)
                loss = self.step(batch)
                step_losses.append(loss)
                n += items
                if progress is not None:
                    progress(items, loss)
        return self._end_of_epoch(epoch, torch.stack(step_losses).cpu(), n, time.perf_counter() - t0, lr, kl_weight)

    def run_steps(self, num_steps: int) -> torch.Tensor:
        raise UserError(f"run_steps is not available for {labels_flag(self.config)} runs; use train_epoch")

    def _scores(self, x, y):
        self.vae.eval()
        with self._own_params():
            return class_scores(self.vae, x, y, num_samples=1)

    def _error(self, scores):
        return None if "correct" not in scores else 1.0 - scores["correct"].mean().item()

    def valid_elbo(self) -> float | None:
        """The mean validation ELBO (one draw of z per item and class; y summed out for ``--semi-supervised``)."""
        if self.valid is None:
            return None
        scores = self._scores(self.valid, self.valid_labels)
        self._valid_error = self._error(scores)
        return scores["elbo"].mean().item()

    def test_elbo(self) -> float:
        scores = self._scores(self.test, self.test_labels)
        self._test_errors.append(self._error(scores))
        return scores["elbo"].mean().item()

    def extra_meta(self) -> dict[str, Any]:
        meta = {"num_classes": self.num_classes}
        if self.labelled is not None:
            meta.update(labelled=len(self.labelled), labelled_seed=self.config.seed + LABELLED_SEED,
                        labelled_items=self.labelled.cpu().tolist())  # fmt: skip
        return meta

    def extra_metrics(self) -> dict[str, Any]:
        return {} if self.labelled is None else {"valid_error": self._valid_error}

    def extra_final(self) -> dict[str, Any]:
        if self.labelled is None or not self._test_errors:
            return {}
        # fit's _final scores the last epoch first, then (when it differs) best.pt
        return {"test_error": self._test_errors[-1], "test_error_last": self._test_errors[0]}



def trainer_class(config):
    """The trainer :func:`~pyro_vae.runs.fit.fit` builds for ``config``: :class:`LabelledTrainer` for a model with
    labels (``--conditional``, ``--semi-supervised``), else :class:`~pyro_vae.train.trainer.Trainer`."""
    return LabelledTrainer if labels_flag(config) else Trainer
