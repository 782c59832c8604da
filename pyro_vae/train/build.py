"""From a :class:`~pyro_vae.config.Config` to the parts of a run: device, data, likelihood, VAE, optimizer.

The order is one way: the config's names are checked against their registries first (before any
data is read), then the data is loaded, then the likelihood family is built once with the data's
number of levels, then the VAE around it. :func:`resolve_config` turns flat keyword settings of
:func:`pyro_vae.fit` (``binarize=...``, ``flow_steps=...``) into the per-component option dicts and
records the options the built parts actually use, so a run folder rebuilds exactly what was trained.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch

import pyro.optim

from ..config import LEGACY_OPTIONS, Config, option_key
from ..data.dataset import Dataset
from ..data.load import load_dataset, with_validation
from ..data.sources import DATASETS
from ..errors import UserError
from ..registry import Registry
from ..vae.guides import guide_class
from ..vae.labels import ConditionalVAE, SemiSupervisedVAE, check_labels
from ..vae.likelihoods import Likelihood, build_likelihood, likelihood_class, likelihood_options
from ..vae.model import VAE
from ..vae.nets import build_architecture
from ..vae.objectives import OBJECTIVES
from ..vae.priors import prior_class
from .schedules import GlobalClipOptim

__all__ = [
    "OPTIMIZERS", "TEST_PREP_SEED", "VALID_PREP_SEED", "Parts", "build", "build_optimizer", "build_vae", "check_names",
    "fusable_optimizer", "labels_flag", "load_prepared", "make_config", "num_classes", "prepare_data", "prepare_valid",
    "resolve_device", "speed_for",
]  # fmt: skip

#: ``--optimizer``: :class:`pyro.optim.PyroOptim` constructors called with ``{"lr": lr}``.
OPTIMIZERS = Registry("optimizer")
# pyro.optim makes its wrappers of torch.optim's classes in a loop at import, which a type checker does not see
OPTIMIZERS.register("adam", pyro.optim.Adam)  # type: ignore[attr-defined]
OPTIMIZERS.register("adagrad", pyro.optim.Adagrad)  # type: ignore[attr-defined]

#: Seed offset of the fixed draw that prepares the test set (e.g. its binarization).
TEST_PREP_SEED = 10_007
#: Seed offset of the fixed draw that prepares the validation set.
VALID_PREP_SEED = 20_011


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a :class:`UserError`;
    ``mps`` (Apple GPUs) where :func:`torch.backends.mps.is_available`, a :class:`UserError` elsewhere."""
    if not isinstance(name, str):
        raise UserError(f"--device must be auto, cpu, cuda or mps, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("--device mps was given but this PyTorch has no usable MPS (Apple GPU) backend; "
                            "use --device cpu or auto")  # fmt: skip
        return torch.device("mps")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; choose one of: auto, cpu, cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA GPU is available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; choose one of: auto, cpu, cuda, cuda:N") from None


def make_config(config: Config | None = None, **settings: Any) -> Config:
    """``config`` (default :class:`Config`) with keyword ``settings`` applied.

    A setting that is not a field of :class:`Config` but an option of a part (``binarize``,
    ``min_scale``, ``sigma``, ``flow_steps``) goes into that part's option dict.

    :raises UserError: for a keyword that is neither.
    """
    config = config or Config()
    fields = set(Config.__dataclass_fields__)
    changes = {k: v for k, v in settings.items() if k in fields}
    for key, value in settings.items():
        if key in fields:
            continue
        group = LEGACY_OPTIONS.get(key)
        if group is None:
            raise UserError(f"unknown setting {key!r}; the settings are the fields of pyro_vae.Config")
        if value is not None:
            changes[group] = {**changes.get(group, getattr(config, group)), option_key(key, group): value}
    return config.replace(**changes) if changes else config


def check_names(config):
    """Check every name the config gives against its registry, before any data is read.

    A user's guide named as ``file.py:Name`` is imported here (that runs its file).

    :raises UserError: naming the unknown choice and the known ones.
    """
    if not config.data:
        DATASETS.get(config.dataset)
    likelihood_class(config.likelihood)  # a user's file.py:Name is imported here
    unknown = set(config.likelihood_options) - set(likelihood_options(config.likelihood))
    if unknown:
        build_likelihood(config.likelihood, **config.likelihood_options)  # raises the message for the option
    guide_class(config.guide)
    prior_class(config.prior)
    OBJECTIVES.get(config.objective)
    OPTIMIZERS.get(config.optimizer)
    build_architecture(config.arch, config.hidden, config.activation, config.channels)


def build_vae(
    config: Config, x_dim: int | Sequence[int], levels: int | None = None, check: bool = True,
    num_classes: int | None = None, likelihood: Likelihood | None = None,
) -> VAE:
    """The :class:`~pyro_vae.vae.model.VAE` a config describes, for items of ``x_dim`` values (or of shape
    ``x_dim``, e.g. ``(C, H, W)``) with ``levels`` levels.

    ``check``: run its guide once on a tiny batch (clear errors for a user's guide before training).
    With ``config.conditional`` or ``config.semi_supervised`` it is the model with labels of
    :mod:`pyro_vae.vae.labels` for ``num_classes`` classes (see :func:`num_classes`).
    """
    if likelihood is None:
        likelihood = build_likelihood(config.likelihood, levels=levels, **config.likelihood_options)
    args = (config.z_dim, config.hidden, config.activation, likelihood, config.guide)
    kwargs: dict[str, Any] = dict(guide_options=config.guide_options, check_guide=check, arch=config.arch,
                                  channels=config.channels, prior=config.prior, prior_options=config.prior_options)
    if config.conditional or config.semi_supervised:
        if num_classes is None:
            raise UserError("a model with labels (--conditional, --semi-supervised) needs the number of classes")
        if config.conditional:
            return ConditionalVAE(x_dim, num_classes, *args, **kwargs)
        return SemiSupervisedVAE(x_dim, num_classes, *args, alpha=config.alpha, **kwargs)
    return VAE(x_dim, *args, **kwargs)


def labels_flag(config):
    """``"--conditional"``, ``"--semi-supervised"`` or ``None``: which model with labels ``config`` asks for."""
    return "--conditional" if config.conditional else "--semi-supervised" if config.semi_supervised else None


def num_classes(config, dataset):
    """The number of classes :math:`C` of a labelled ``dataset``: one more than its largest label (labels
    are class indices ``0 .. C - 1``), over its training, validation and test labels.

    :raises UserError: when the training or test items have no labels, or labels that are not class indices.
    """
    flag = labels_flag(config)
    source = "--data" if config.data else f"--dataset {config.dataset}"
    for name, what in (("labels", "training"), ("test_labels", "test")):
        labels = getattr(dataset, name)
        if labels is None:
            raise UserError(f"{flag} needs labelled data, but the {what} items of {source} have no labels (a --data "
                            "file holds them as y_train/y_test, labels, or (data, labels); an image folder as one "
                            "subfolder per class)")  # fmt: skip
    parts = [dataset.labels, dataset.test_labels] + ([dataset.valid_labels] if dataset.valid_labels is not None else [])
    for part, n, what in zip(parts, (len(dataset.train), len(dataset.test), 0 if dataset.valid is None else len(dataset.valid)),
                             ("training", "test", "validation")):  # fmt: skip
        check_labels(part, 2**31, n, f"the {what} labels of {source}")
    classes = int(max(int(p.max()) for p in parts if len(p))) + 1
    if classes < 2:
        raise UserError(f"{flag} needs at least 2 classes; the labels of {source} hold only class 0")
    return classes


def build_optimizer(config):
    """The :class:`pyro.optim.PyroOptim` of ``--optimizer`` with ``--lr`` (and ``--weight-decay``),
    wrapped in :class:`~pyro_vae.train.schedules.GlobalClipOptim` for ``--clip-norm``.

    :raises UserError: ``--weight-decay`` for an optimizer whose constructor takes no ``weight_decay``.
    """
    args = {"lr": config.lr}
    if config.weight_decay:
        args["weight_decay"] = config.weight_decay
    optim = OPTIMIZERS.get(config.optimizer)(args)
    if config.weight_decay:
        import inspect

        constructor = getattr(optim, "pt_optim_constructor", None)
        try:
            takes = constructor is not None and "weight_decay" in inspect.signature(constructor).parameters
        except (TypeError, ValueError):
            takes = False
        if not takes:
            raise UserError(f"--weight-decay: the {config.optimizer} optimizer takes no weight_decay argument")
    if config.clip_norm is not None:
        optim = GlobalClipOptim(optim, config.clip_norm)
    return optim


def fusable_optimizer(optimizer):
    """Whether the fast path (one torch optimizer over all parameters, :class:`~pyro_vae.speed.Speed`'s
    ``"fused"``/``"foreach"``/``"torch"``) reproduces ``optimizer`` exactly.

    Only a plain :class:`pyro.optim.PyroOptim` of a :class:`torch.optim.Optimizer` with one dict of
    arguments and no gradient clipping does: a learning-rate scheduler
    (:class:`pyro.optim.PyroLRScheduler`, e.g. ``pyro.optim.ExponentialLR``, stepped by the user),
    per-parameter arguments given as a callable, ``clip_args`` or a subclass run on Pyro's own path
    (``Speed(optimizer="pyro")``), never replaced by something else.
    """
    import inspect

    constructor = getattr(optimizer, "pt_optim_constructor", None)
    return (
        type(optimizer) is pyro.optim.PyroOptim
        and not callable(optimizer.pt_optim_args)
        and not optimizer.pt_clip_args
        and inspect.isclass(constructor)
        and issubclass(constructor, torch.optim.Optimizer)
    )


def speed_for(speed, optimizer):
    """``speed`` with ``optimizer="pyro"`` when the fast path cannot reproduce ``optimizer`` exactly
    (see :func:`fusable_optimizer`); otherwise ``speed`` as it is."""
    if speed.optimizer != "pyro" and not fusable_optimizer(optimizer):
        return speed.replace(optimizer="pyro")
    return speed


def prepare_data(config, likelihood, device, dataset=None, train_device=None):
    """Check and prepare the data for ``likelihood`` on ``device`` (loading it unless ``dataset`` is given).

    Returns ``(dataset, train, test)``: ``train`` has had the deterministic preparation applied
    (random preparation happens per batch; the validation items of :func:`~pyro_vae.data.load.with_validation`
    are not in it), on ``train_device`` (default ``device``); ``test`` is fully prepared once with a fixed seed so
    that test numbers are comparable across epochs and runs. The validation set
    (``dataset.valid``) is prepared the same way with its own seed: :func:`prepare_valid`.

    :raises UserError: for data outside the family's support.
    """
    if dataset is None:
        dataset = load_dataset(config.dataset, config.data_dir, config.data, config.test_data, config.layout,
                               config.image_size)  # fmt: skip
    dataset = with_validation(dataset, None if config.data else config.dataset)
    likelihood.check_data(dataset.train, "the training data")
    likelihood.check_data(dataset.test, "the test data")
    train = likelihood.prepare_static(dataset.train.to(device if train_device is None else train_device))
    generator = torch.Generator(device=device).manual_seed(config.seed + TEST_PREP_SEED)
    test = likelihood.prepare_batch(likelihood.prepare_static(dataset.test.to(device)), generator)
    return dataset, train, test


def prepare_valid(config, likelihood, device, dataset):
    """The validation set of ``dataset`` prepared like the test set (fixed draw, seed
    ``config.seed + VALID_PREP_SEED``), or ``None`` when it has none."""
    if dataset.valid is None:
        return None
    likelihood.check_data(dataset.valid, "the validation data")
    generator = torch.Generator(device=device).manual_seed(config.seed + VALID_PREP_SEED)
    return likelihood.prepare_batch(likelihood.prepare_static(dataset.valid.to(device)), generator)


def load_prepared(config, device=None, train_device=None):
    """Load the data of ``config``, build its likelihood family with the data's levels, and prepare the data.

    For scripts that need the data as a run sees it without building a model (benchmarks, examples).
    :returns: ``(dataset, likelihood, train, test)`` as :func:`prepare_data` gives them.
    """
    device = resolve_device(config.device) if device is None else torch.device(device)
    dataset = load_dataset(config.dataset, config.data_dir, config.data, config.test_data, config.layout,
                           config.image_size)  # fmt: skip
    dataset = with_validation(dataset, None if config.data else config.dataset)
    likelihood = build_likelihood(config.likelihood, levels=dataset.levels, **config.likelihood_options)
    dataset, train, test = prepare_data(config, likelihood, device, dataset, train_device)
    return dataset, likelihood, train, test


#: Fraction of the GPU's free memory the training set may take before it is streamed instead.
STREAM_BUDGET = 0.5


def should_stream(config, dataset, device):
    """``--stream``, or automatically: on a GPU when the training set (as uint8 for 8-bit data, else
    float32) would take more than :data:`STREAM_BUDGET` of the device's free memory."""
    if config.stream:
        return True
    if device.type != "cuda":
        return False
    bytes_per_value = 1 if dataset.levels in (2, 256) else 4
    free, _ = torch.cuda.mem_get_info(device)
    return dataset.train.numel() * bytes_per_value > STREAM_BUDGET * free


class TrainingData:
    """The prepared training set, stored compactly, handed out in prepared float32 minibatches.

    **8-bit storage.** When every value is a level ``k / 255`` (8-bit and binary data, after the
    deterministic preparation), the items are stored as uint8 ``k`` and each minibatch is converted
    back as ``k / 255`` in float32 (a correctly rounded division, the values the data was read as):
    4x less memory than float32, the same numbers.

    **Streaming.** With ``stream`` the items stay in host memory (pinned when the device is a GPU)
    and :meth:`batches` moves each minibatch to the device through a :class:`torch.utils.data.DataLoader`
    (``workers`` background processes, pinned memory). The order of the items is the same
    ``order`` either way, the loader uses a generator of its own (so it draws nothing from torch's
    global generators), and the random preparation (e.g. dynamic binarization) runs on the device
    after the transfer, as without streaming: a seeded run gives the same losses both ways.

    :param torch.Tensor x: the training items, deterministic preparation applied, ``(N, *item_shape)``.
    :param torch.device device: where minibatches are used.
    """

    def __init__(self, x, device, stream=False, workers=0):
        self.device, self.stream, self.workers = torch.device(device), bool(stream), int(workers)
        u8 = None
        if x.dtype == torch.float32 and x.numel():
            k = (x * 255).round()
            if bool(((k >= 0) & (k <= 255)).all()) and torch.equal(k / 255, x):
                u8 = k.to(torch.uint8)
        #: the stored items: uint8 ``k`` (``x = k / 255``) or float32 as given
        self.x = u8 if u8 is not None else x
        self.x = self.x.cpu() if self.stream else self.x.to(self.device)
        if self.stream and self.device.type == "cuda":
            self.x = self.x.pin_memory()

    def __len__(self):
        return len(self.x)

    @property
    def shape(self):
        return self.x.shape

    @property
    def nbytes(self):
        """Bytes the stored items take."""
        return self.x.numel() * self.x.element_size()

    def tensor(self):
        """Every item as float32 on the device (the whole set at once, as before 8-bit storage)."""
        return self._float(self.x.to(self.device))

    def _float(self, x):
        return x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x

    def __getitem__(self, index):
        """The items ``index`` (e.g. a tensor of indices) as float32 on the device."""
        if self.stream:
            index = index.cpu() if isinstance(index, torch.Tensor) else index
            return self._float(self.x[index].to(self.device, non_blocking=True))
        return self._float(self.x[index])

    def batches(self, order, batch_size=None):
        """The minibatches ``order[i : i + batch_size]``, ``i = 0, batch_size, ...``, as float32 on the device.

        With ``batch_size=None``, ``order`` is already a sequence of index batches (e.g. one process's
        shards of data-parallel training).
        """
        chunks = list(order.split(batch_size)) if batch_size is not None else list(order)
        if not self.stream:
            for index in chunks:
                yield self[index]
            return
        from torch.utils.data import DataLoader

        chunks = [index.cpu() for index in chunks]
        loader = DataLoader(chunks, batch_size=None, collate_fn=self._gather, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator())  # fmt: skip
        for x in loader:
            yield self._float(x.to(self.device, non_blocking=True))

    def _gather(self, index):
        return self.x[index]


class Parts(NamedTuple):
    """What :func:`build` returns: everything a run needs before its first step."""

    #: the config with the options the parts use written out (as ``config.json`` records it)
    config: Config
    device: torch.device
    dataset: Dataset
    #: the training data with the deterministic preparation applied (:class:`TrainingData`: uint8 for
    #: 8-bit data, on the device or streamed from host memory)
    train: "TrainingData"
    #: the test data on the device, fully prepared with a fixed draw
    test: torch.Tensor
    vae: VAE
    optimizer: pyro.optim.PyroOptim
    #: the validation data on the device, prepared like the test set (its own fixed draw)
    valid: torch.Tensor | None = None


def build(config):
    """Build the parts of a run from ``config``: names checked, data loaded, family built with the
    data's levels, VAE (its guide checked) on the device, optimizer.

    Seeds the random number generators with ``config.seed`` first (as :func:`pyro_vae.fit` does), so
    two builds of one config initialize the same parameters.
    """
    device = resolve_device(config.device)
    check_names(config)
    pyro.set_rng_seed(config.seed)
    dataset = load_dataset(config.dataset, config.data_dir, config.data, config.test_data, config.layout,
                           config.image_size)  # fmt: skip
    stream = should_stream(config, dataset, device)
    likelihood = build_likelihood(config.likelihood, levels=dataset.levels, **config.likelihood_options)
    dataset, train, test = prepare_data(config, likelihood, device, dataset, torch.device("cpu") if stream else None)
    train = TrainingData(train, device, stream=stream)
    classes = num_classes(config, dataset) if labels_flag(config) else None
    vae = build_vae(config, dataset.item_shape, likelihood=likelihood, num_classes=classes).to(device)
    options = vae.encoder.options() if hasattr(vae.encoder, "options") else dict(config.guide_options)
    resolved = config.replace(likelihood_options=likelihood.options(), guide_options=options,
                              prior_options=vae.prior_module.options())  # fmt: skip
    valid = prepare_valid(config, likelihood, device, dataset)
    return Parts(resolved, device, dataset, train, test, vae, build_optimizer(config), valid)

