"""Every setting of a run, saved as ``config.json`` and used to rebuild the run later.

A :class:`Config` names one choice per axis (dataset, likelihood family, guide, objective,
network architecture, optimizer) and carries the options of the parts it names as per-component
dicts (:attr:`Config.likelihood_options`, :attr:`Config.guide_options`),
so that a run folder rebuilds exactly what was trained, whatever options a user's own part takes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError

#: Flat keywords of older ``config.json`` files (and of ``fit(**settings)``) and the option dict each belongs to.
LEGACY_OPTIONS = {
    "binarize": "likelihood_options",
    "min_scale": "likelihood_options",
    "sigma": "likelihood_options",
    "mixtures": "likelihood_options",
    "flow_steps": "guide_options",
    # the prior's options, given flat as --prior-components / --prior-flow-steps (their key in prior_options
    # drops the "prior_" prefix: see PRIOR_PREFIX)
    "prior_components": "prior_options",
    "prior_flow_steps": "prior_options",
}

#: a flat setting of ``prior_options`` is named ``prior_<option>`` (``prior_components`` -> ``components``)
PRIOR_PREFIX = "prior_"


def option_key(key: str, group: str) -> str:
    """The key of the flat setting ``key`` inside its option dict ``group``."""
    return key[len(PRIOR_PREFIX):] if group == "prior_options" else key

#: ``--lr-schedule`` choices (built in :mod:`pyro_vae.train.schedules`)
LR_SCHEDULES = ("none", "step", "exponential", "cosine", "plateau")


def parse_widths(
    spec: Any, flag: str = "--channels", example: str = "32,64,128,256", unit: str = "size"
) -> tuple[int, ...]:
    """``"32,64"`` -> ``(32, 64)``; also an int or a sequence of positive integers.

    :raises UserError: for anything but one or more positive integers, naming ``flag`` and ``unit``.
    """
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if isinstance(spec, str):
        spec = [s for s in spec.replace(" ", "").split(",") if s]
    try:
        sizes = tuple(int(s) for s in spec)
    except (TypeError, ValueError):
        raise UserError(f"{flag} takes {unit}s like {example}, got {spec!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise UserError(f"{flag} needs at least one positive {unit}, got {spec!r}")
    return sizes


def check_integer(value: Any, flag: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` when it is a whole number (not a bool) from ``low`` to ``high``.

    The Python API's check of the integers the CLI checks with ``click.IntRange`` (``--samples``,
    ``--seeds``, ...), so that both refuse the same values with one line.

    :raises UserError: naming ``flag`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{flag} must be an integer, got {value!r}")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        bound = f"between {low} and {high}" if high is not None and low is not None else (
            f"at least {low}" if low is not None else f"at most {high}")
        raise UserError(f"{flag} must be {bound}, got {value}")
    return number


def check_path(value: Any, what: str) -> str | os.PathLike:
    """``value`` when it is a path (``str`` or :class:`os.PathLike`, not empty); :class:`UserError` otherwise."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise UserError(f"{what} must be a path (a str or pathlib.Path), got {value!r}")
    return value


def parse_hidden(spec: Any) -> tuple[int, ...]:
    """``"400"`` -> ``(400,)``, ``"200,200"`` -> ``(200, 200)``: the hidden layer sizes of ``--hidden``.

    :raises UserError: for anything but one or more positive integers.
    """
    return parse_widths(spec, "--hidden", "400 or 200,200")


@dataclass
class Config:
    """The settings of one ``fit``. Defaults are those of ``pyro-vae fit`` (see the README).

    The architecture defaults (784-400-20, ReLU, Adam 1e-3, batch 128) are those of
    pytorch/examples' VAE; the paper's own (500 tanh units, Adagrad 0.01, batch 100) are a flag away.

    ``likelihood_options`` and ``guide_options`` hold the constructor keywords of the chosen
    family and guide (e.g. ``{"binarize": "dynamic"}``, ``{"flow_steps": 4}``); options left out
    take the part's own defaults, and a run records the resolved ones.
    """

    #: registered data set (``pyro_vae.DATASETS``: digits, mnist, frey, ...); ignored when ``data`` is given
    dataset: str = "mnist"
    #: folder holding the data files (None: ``$PYRO_VAE_DATA``, else ``~/.cache/pyro-vae``); never written into
    data_dir: str | None = None
    #: the user's own training data: an array file (``.npy``/``.npz``/``.pt``, items first) or a folder of images
    data: str | None = None
    #: test array for ``data`` (None: a fixed 10% split of ``data``)
    test_data: str | None = None
    #: the family p(x|z) of the decoder (``pyro_vae.LIKELIHOODS``)
    likelihood: str = "bernoulli"
    #: constructor keywords of the likelihood family, e.g. ``{"binarize": "dynamic"}`` (see the class docstring)
    likelihood_options: dict = field(default_factory=dict)
    #: the guide q(z|x) (``pyro_vae.GUIDES``), or ``file.py:Class`` / ``module:Class`` of your own
    guide: str = "diagonal"
    #: constructor keywords of the guide, e.g. ``{"flow_steps": 4}``
    guide_options: dict = field(default_factory=dict)
    #: the prior p(z): standard (N(0, I)), mog, vamp, flow or a user's FILE.py:CLASS (pyro_vae.vae.priors)
    prior: str = "standard"
    #: constructor keywords of the prior, e.g. ``{"components": 500}``
    prior_options: dict = field(default_factory=dict)
    #: training objective (``pyro_vae.OBJECTIVES``): elbo (estimator A), elbo-analytic (B), iwae, rws
    objective: str = "elbo"
    #: samples K of z per datapoint and step (vectorized); iwae and rws need K >= 2
    particles: int = 1
    #: network architecture of encoder and decoder: mlp, conv, resnet, or ``file.py:Class`` of your own
    arch: str = "mlp"
    #: convolution widths of the ``conv`` and ``resnet`` architectures, from the image inwards
    channels: tuple = field(default=(32, 64, 128, 256))
    #: ``nchw`` / ``nhwc``: the layout of a 4-d ``--data`` array whose shape is ambiguous
    layout: str | None = None
    #: ``(H, W)``: resize the images of a ``--data`` folder
    image_size: tuple | None = None
    #: latent size (the dimension of z); 2 also draws the latent manifold
    z_dim: int = 20
    #: hidden layer sizes of the ``mlp`` encoder and decoder, e.g. ``(500,)`` or ``(200, 200)``
    hidden: tuple = field(default=(400,))
    #: hidden nonlinearity of both nets: relu, tanh, softplus or elu
    activation: str = "relu"
    #: ``pyro.optim`` optimizer (``pyro_vae.OPTIMIZERS``): adam, or adagrad (the paper's)
    optimizer: str = "adam"
    #: learning rate (step size) of the optimizer
    lr: float = 1e-3
    #: minibatch size M (the global batch with several devices)
    batch_size: int = 128
    #: passes over the training data, in total (also when resuming)
    epochs: int = 10
    #: seeds initialization, shuffling, binarization and the draws of z; a CPU run repeats exactly
    seed: int = 0
    #: auto (CUDA when available), cpu, cuda or mps
    device: str = "auto"
    #: weight of the KL term (beta-VAE, Higgins et al. 2017); 1 is the ELBO
    beta: float = 1.0
    #: epochs of linear KL warm-up from 0 to ``beta`` (Bowman et al. 2016; Sonderby et al. 2016)
    kl_warmup: float = 0
    #: free bits lambda, nats per latent unit (Kingma et al. 2016); 0: none
    free_bits: float = 0.0
    #: learning-rate schedule: none, step, exponential, cosine or plateau (see pyro_vae.train.schedules)
    lr_schedule: str = "none"
    #: epochs: the step size of ``step``, the patience of ``plateau`` (None: 10)
    lr_step: int | None = None
    #: the factor of ``step``, ``exponential`` and ``plateau`` (None: 0.1, 0.95, 0.1)
    lr_gamma: float | None = None
    #: steps of linear learning-rate warm-up (0: none)
    lr_warmup: int = 0
    #: L2 penalty of the optimizer (its ``weight_decay`` argument); 0: none
    weight_decay: float = 0.0
    #: clip the global gradient norm to this before each step (None: no clipping)
    clip_norm: float | None = None
    #: stop after this many epochs without a better validation ELBO (None: never)
    early_stopping: int | None = None
    #: stream minibatches from host memory through a DataLoader instead of holding the data on the device
    stream: bool = False
    #: the conditional VAE p(x | z, y), q(z | x, y) on labelled data (pyro_vae.vae.labels)
    conditional: bool = False
    #: M2 of Kingma, Rezende, Mohamed & Welling (2014): the label a latent variable, observed on --labelled items
    semi_supervised: bool = False
    #: labelled training items of a --semi-supervised run, balanced over the classes (None: 100)
    labelled: int | None = None
    #: weight alpha of the classification term on labelled items (eq. 9 of Kingma et al. 2014)
    alpha: float = 50.0

    #: The settings a resumed run may change: they do not change what is computed. The one list
    #: that ``fit --resume``, ``compare`` and ``load_run`` consult.
    RESUMABLE = ("epochs", "device", "data_dir", "early_stopping", "stream")

    #: The largest seed: every generator seeded from it (torch, NumPy's 32-bit RandomState) accepts it.
    MAX_SEED = 2**32 - 1

    def __post_init__(self) -> None:
        self.hidden = parse_hidden(self.hidden)
        self.channels = parse_widths(self.channels, "--channels", "32,64,128,256")
        if self.image_size is not None:
            size = parse_widths(self.image_size, "--image-size", "64 or 28,20")
            if len(size) > 2:
                raise UserError(f"--image-size takes H or H,W, got {self.image_size!r}")
            self.image_size = size * 2 if len(size) == 1 else size
        self.validate()
        for name in ("likelihood_options", "guide_options", "prior_options"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, {})
            elif not isinstance(value, dict):
                raise UserError(f"{name} must be a dict of keyword options, got {type(value).__name__}")
            else:
                setattr(self, name, dict(value))

    def validate(self) -> None:
        """Check the values the CLI checks with its option types, so the Python API refuses what the CLI refuses.

        :raises UserError: one line naming the setting, as ``--flag``, and the value.
        """

        def integer(name, low, high=None):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise UserError(f"--{name.replace('_', '-')} must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                bound = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise UserError(f"--{name.replace('_', '-')} must be {bound}, got {value}")
            setattr(self, name, int(value))

        for name in ("z_dim", "particles", "batch_size"):
            integer(name, 1)
        integer("epochs", 0)
        integer("seed", 0, self.MAX_SEED)
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive finite number, got {self.lr!r}")
        self.lr = float(self.lr)
        def real(name, low, strict=False, none=False):
            value = getattr(self, name)
            if value is None and none:
                return
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
            if value < low or (strict and value == low):
                raise UserError(f"--{name.replace('_', '-')} must be {'above' if strict else 'at least'} {low:g}, got {value!r}")
            setattr(self, name, float(value))

        real("beta", 0)
        real("kl_warmup", 0)
        real("free_bits", 0)
        real("weight_decay", 0)
        real("clip_norm", 0, strict=True, none=True)
        real("lr_gamma", 0, strict=True, none=True)
        integer("lr_warmup", 0)
        for name in ("lr_step", "early_stopping"):
            if getattr(self, name) is not None:
                integer(name, 1)
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_gamma is not None and self.lr_schedule != "none" and self.lr_gamma >= 1 and self.lr_schedule != "cosine":
            raise UserError(f"--lr-gamma must be below 1 (a decay factor), got {self.lr_gamma:g}")
        for name in ("dataset", "likelihood", "objective", "arch", "activation", "optimizer", "device"):
            if not isinstance(getattr(self, name), str):
                raise UserError(f"--{name} must be a name, got {getattr(self, name)!r}")
        if not isinstance(self.guide, str) or not self.guide:
            raise UserError(f"--guide must be a name or FILE.py:CLASS, got {self.guide!r}")
        if not isinstance(self.prior, str) or not self.prior:
            raise UserError(f"--prior must be a name or FILE.py:CLASS, got {self.prior!r}")
        if self.layout is not None and self.layout not in ("nchw", "nhwc"):
            raise UserError(f"--layout must be nchw or nhwc, got {self.layout!r}")
        if not isinstance(self.stream, bool):
            raise UserError(f"--stream must be true or false, got {self.stream!r}")
        for name in ("conditional", "semi_supervised"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"--{name.replace('_', '-')} must be true or false, got {getattr(self, name)!r}")
        if self.conditional and self.semi_supervised:
            raise UserError("--conditional and --semi-supervised exclude each other (the first observes every label, "
                            "the second only --labelled ones)")  # fmt: skip
        if self.labelled is not None:
            if not self.semi_supervised:
                raise UserError("--labelled applies to --semi-supervised runs only")
            integer("labelled", 1)
        real("alpha", 0)
        for name in ("data", "test_data", "data_dir"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
                raise UserError(f"--{name.replace('_', '-')} must be a non-empty path, got {value!r}")
            # stored absolute, so that a run folder names its data wherever it is opened from
            setattr(self, name, str(Path(value).expanduser().absolute()))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["channels"] = list(self.channels)
        if self.image_size is not None:
            d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """A config from ``config.json`` contents (extra keys such as ``x_dim`` are ignored).

        Files written before options became per-component dicts carry them as flat keys
        (``binarize``, ``min_scale``, ``sigma``, ``flow_steps``); they are moved into their dict.
        """
        if not isinstance(d, dict):
            raise UserError(f"settings must be a mapping of setting names to values, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        settings = {k: v for k, v in d.items() if k in names}
        for key, group in LEGACY_OPTIONS.items():
            if d.get(key) is not None and option_key(key, group) not in (d.get(group) or {}):
                settings[group] = {**(settings.get(group) or {}), option_key(key, group): d[key]}
        return cls(**settings)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def resumed_from(self, saved: Config) -> Config:
        """This config as the continuation of a run saved with ``saved``: options it leaves out are the saved ones."""
        return self.replace(
            likelihood_options={**saved.likelihood_options, **self.likelihood_options},
            guide_options={**saved.guide_options, **self.guide_options},
            prior_options={**saved.prior_options, **self.prior_options},
        )

    def differences(self, other: Config, ignore: Sequence[str] = RESUMABLE) -> list[str]:
        """Names of the settings in which ``other`` differs from this config."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in ignore and a[k] != b[k]]
