"""Progress while a run trains: the per-step callbacks ``fit`` chains (a tqdm bar, the user's ``on_step``).

The per-epoch line (:func:`~pyro_vae.train.loggers.format_epoch_line`) and the plain progress lines for logs
(:class:`~pyro_vae.train.loggers.PlainProgress`) are beside the loggers.
"""

import sys
import time

from tqdm.auto import tqdm

from .loggers import PlainProgress, format_epoch_line, interactive
from .trainer import Step

__all__ = ["EpochDisplay", "OnStep", "ProgressBar", "chain"]


class OnStep:
    """Calls ``fit``'s ``on_step`` with a :class:`Step` (reading the loss: a host sync per step)."""

    def __init__(self, callback, epoch, samples, vae):
        self.callback, self.epoch, self.samples, self.vae, self.step = callback, epoch, samples, vae, 0

    def __call__(self, items, loss):
        self.step += 1
        self.samples += items
        self.callback(Step(self.epoch, self.step, self.samples, loss.item(), self.vae))


def chain(*callbacks):
    """One ``progress(items, loss)`` callback calling each given one in turn (``None`` if none given)."""
    callbacks = [c for c in callbacks if c is not None]
    if not callbacks:
        return None

    def call(items, loss):
        for callback in callbacks:
            callback(items, loss)

    return call


class ProgressBar:
    """Feeds a tqdm bar; reads the loss for its postfix at most twice a second (a host sync each)."""

    INTERVAL = 0.5

    def __init__(self, bar):
        self.bar, self.last = bar, 0.0

    def __call__(self, items, loss):
        self.bar.update(items)
        now = time.perf_counter()
        if now - self.last >= self.INTERVAL:
            self.last = now
            self.bar.set_postfix(loss=f"{loss.item() / items:.2f}", refresh=False)


class EpochDisplay:
    """What a training run shows per epoch on stderr: a tqdm bar during the epoch and the epoch's line after it
    on a terminal; one plain line per epoch when stderr is not a terminal (logs, notebooks); nothing when
    ``quiet`` (or on a data-parallel rank other than the lead).

    :param int epochs: the run's total number of epochs.
    :param int items: training items per epoch (the bar's total).
    """

    def __init__(self, epochs, items, quiet=False, lead=True):
        self.epochs, self.items = epochs, items
        self.terminal = lead and not quiet and interactive()  # a terminal or a Jupyter notebook: a tqdm.auto bar
        self.plain = PlainProgress(epochs=epochs) if lead and PlainProgress.wanted(quiet) else None

    def bar(self, epoch):
        """The epoch's progress bar (disabled off a terminal); close it when the epoch ends."""
        return tqdm(total=self.items, desc=f"epoch {epoch}/{self.epochs}", unit="img", disable=not self.terminal,
                    leave=False)  # fmt: skip

    def step_callback(self, bar):
        """``progress(items, loss)`` feeding ``bar``, or ``None`` off a terminal."""
        return ProgressBar(bar) if self.terminal else None

    def epoch_done(self, record):
        """Show the finished epoch's record."""
        if self.terminal:
            tqdm.write(format_epoch_line(record, self.epochs), file=sys.stderr)
        elif self.plain is not None:
            self.plain(record)
