r"""One rank of a data-parallel run: :class:`DistributedTrainer`, a :class:`~pyro_vae.train.trainer.Trainer`
whose SVI step is PyTorch's :class:`~torch.nn.parallel.DistributedDataParallel` (DDP) step
(:class:`~pyro_vae.speed.ddp.DDPStep`), and the networks in bfloat16 (:func:`autocast_networks`).
Starting the processes (spawned, or launched by ``torchrun``/SLURM) is :mod:`pyro_vae.runs.launch`'s.

**What a step computes.** The one-process step on a global minibatch :math:`B` of :math:`M` items
descends the gradient of :math:`-\widetilde{\mathcal{L}}(B) = -\sum_{i\in B}\widetilde{\mathcal{L}}(x_i)`
(the per-item estimate of eq. 6 of Kingma & Welling 2013, summed as in eq. 8 without its :math:`N/M`). With :math:`W` processes, every process holds
the same seeded permutation of the epoch (drawn on rank 0 and broadcast) and rank :math:`r` takes the
:math:`r`-th of :math:`W` near-equal slices :math:`B_r` of each global batch
(:func:`torch.tensor_split`), so :math:`\bigcup_r B_r = B`. Rank :math:`r` computes its loss
:math:`\ell_r = -\sum_{i\in B_r}\widetilde{\mathcal{L}}(x_i)` *inside the forward of the DDP-wrapped
module* (:class:`~pyro_vae.speed.ddp.LossModule`, so DDP's gradient hooks fire; the step is
:class:`~pyro_vae.speed.ddp.DDPStep`, with the one-process step's model, guide, KL weighting,
learning-rate schedule and clipping) and back-propagates :math:`W\ell_r`. DDP
averages gradients over ranks, so every rank applies

.. math::  \frac1W\sum_r \nabla (W\ell_r) = \nabla \sum_r \ell_r = \nabla\big(-\widetilde{\mathcal{L}}(B)\big),

the one-process gradient of the union batch (``tests/runs/test_distributed.py`` checks the parameters
after a step against one process, to ``atol=1e-6``). No gradient is all-reduced by hand: DDP does it,
bucketed and overlapped with the backward pass. The only differences from one process are the
random draws: rank 0 keeps the run's seeded generator (it draws the permutation exactly as one
process would), rank :math:`r>0` draws its binarization and :math:`\epsilon` from a generator reseeded
by ``(seed, rank, epoch)`` at the start of every epoch, so a run resumed with the same number of
processes repeats the uninterrupted one exactly. ``--free-bits`` is refused (its max is over the
global batch's average KL, which no rank sees). The last global batch of an epoch, if it has fewer items than processes,
is skipped for that epoch (at most :math:`W-1` items, a different set each epoch).

**Metrics.** Step losses are summed over ranks (``all_reduce``), so ``train_elbo`` is the mean over all
items trained; the test ELBO is computed on a disjoint slice of the test set per rank and summed.

**Precision.** ``precision="bf16"`` runs the networks (every :class:`~pyro_vae.vae.nets.MLP`) under
:func:`torch.autocast` with bfloat16 and casts their outputs back to float32, so the distributions'
log-densities and the ELBO are computed in float32 (:func:`autocast_networks`). On CUDA, and on CPUs with
bfloat16 instructions (AVX512_BF16 or AMX, :func:`pyro_vae.speed.precision.check_precision`); on other
CPUs it is refused (there bfloat16 products are slower than float32, and nothing is gained).
"""

import torch
import torch.distributed as dist

import pyro

from ..errors import UserError
from ..speed import DDPStep
from ..speed.precision import PRECISIONS, check_precision
from ..vae.evaluation import evaluate
from ..vae.nets import MLP
from .trainer import Trainer

__all__ = ["PRECISIONS", "DistributedTrainer", "autocast_networks"]  # DDPStep: pyro_vae.speed


# Precision -----------------------------------------------------------------------------------
def autocast_networks(module, device_type="cuda", dtype=torch.bfloat16):
    """Run every :class:`~pyro_vae.vae.nets.MLP` inside ``module`` under :func:`torch.autocast` and cast
    its output back to float32, so everything downstream of the networks (the distributions'
    ``log_prob``, the KL, the ELBO) stays in float32. Forward hooks: parameter names and
    checkpoints do not change. Returns the hook handles (``.remove()`` undoes it)."""
    handles = []
    for m in module.modules():
        if not isinstance(m, MLP):
            continue
        stack = []

        def enter(_, args, stack=stack):
            context = torch.autocast(device_type, dtype=dtype)
            context.__enter__()
            stack.append(context)

        def leave(_, args, output, stack=stack):
            stack.pop().__exit__(None, None, None)
            return output.float()

        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    return handles


# The trainer ---------------------------------------------------------------------------------
def _seed_rank(seed, rank, epoch):
    """Rank r > 0 draws its noise from its own stream: seeded by (seed, rank, epoch)."""
    pyro.set_rng_seed((seed * 1_000_003 + rank * 7_919 + epoch) % 2**32)


class DistributedTrainer(Trainer):
    """A :class:`~pyro_vae.train.trainer.Trainer` for one rank of a data-parallel run (or one process
    with ``precision="bf16"``). The process group must be initialized when ``world_size > 1``.

    :param int rank: this process's rank, ``0 <= rank < world_size``.
    :param int world_size: the number of processes.
    :param str precision: ``"fp32"`` or ``"bf16"`` (CUDA, or a CPU with bfloat16 instructions; see
        :func:`autocast_networks`).
    :raises UserError: for ``bf16`` where the device cannot run it, a batch size below the number of processes, or an
        objective or guide DDP cannot run (see :class:`DDPStep`).
    """

    def __init__(self, config=None, speed=None, *, rank=0, world_size=1, precision="fp32", **settings):
        super().__init__(config, speed, **settings)
        self.rank, self.world_size, self.precision = rank, world_size, precision
        check_precision(precision, self.device)
        if precision == "bf16":
            autocast_networks(self.vae, self.device.type)
        if world_size > 1:
            if self.config.batch_size < world_size:
                raise UserError(f"--batch-size {self.config.batch_size} is smaller than --devices {world_size}: "
                                "every process needs at least one item per step")  # fmt: skip
            if self.config.free_bits:
                raise UserError(
                    "--free-bits is not available with --devices > 1: its penalty max(lambda, KL_j) is taken on "
                    "the KL of each latent unit averaged over the whole global batch, which no process sees; "
                    "train with one device"
                )
            # the one-process step's model, guide (KL-weighted), loss and optimizer (schedule, clipping)
            one = self.step
            self.step = DDPStep(one.model, one.guide, one.loss, one.optim, self.vae, world_size, self.speed, self.device)
            with self._own_params(), torch.random.fork_rng([self.device] if self.device.type == "cuda" else []):
                first = torch.arange(min(2, len(self.train)), device=self.device)
                self.step.check(self.vae.likelihood.prepare_batch(self.train[first]))
            if rank > 0:
                _seed_rank(self.config.seed, rank, 0)

    def train_epoch(self, progress=None):
        """:meth:`Trainer.train_epoch`; rank r > 0 first reseeds its noise for the epoch from
        ``(seed, rank, epoch)``, so a resumed run draws what the uninterrupted one drew (rank 0's
        generator is the checkpoint's)."""
        if self.world_size > 1:
            self.step.new_epoch()  # the same gradient buckets every epoch, resumed or not (see DDPStep.new_epoch)
            if self.rank > 0:
                _seed_rank(self.config.seed, self.rank, self.epoch)
        return super().train_epoch(progress)

    def shard(self, order):
        """Rank 0's permutation, broadcast; rank r's slice of each global batch (the last global
        batch is skipped if it has fewer items than processes)."""
        if self.world_size == 1:
            return super().shard(order)
        dist.broadcast(order, src=0)
        batches, items = [], 0
        for i in range(0, len(order), self.config.batch_size):
            batch = order[i : i + self.config.batch_size]
            if len(batch) < self.world_size:
                break
            batches.append(torch.tensor_split(batch, self.world_size)[self.rank])
            items += len(batch)
        return batches, items

    def reduce(self, losses):
        if self.world_size > 1:
            dist.all_reduce(losses)  # sum over ranks
        return losses

    def test_elbo(self):
        """The mean test ELBO: rank r scores test items r, r + W, ...; the sums are all-reduced."""
        return self._sliced_elbo(self.test) if self.world_size > 1 else super().test_elbo()

    def valid_elbo(self):
        """The mean validation ELBO, as :meth:`test_elbo`: the same number on every rank, so that every
        rank picks the same best epoch and stops early at the same epoch."""
        if self.world_size == 1 or self.valid is None:
            return super().valid_elbo()
        return self._sliced_elbo(self.valid)

    def _sliced_elbo(self, data):
        self.vae.eval()
        with self._own_params():
            elbo, _ = evaluate(self.vae, data[self.rank :: self.world_size], num_samples=1)
        total = elbo.double().sum().reshape(1)
        dist.all_reduce(total)
        return total.item() / len(data)

    def load_state_dict(self, state, where="the checkpoint"):
        super().load_state_dict(state, where)
        if self.rank > 0:  # the checkpoint holds rank 0's generator state
            _seed_rank(self.config.seed, self.rank, self.epoch)
