"""The ``pyro-vae`` command line: a thin layer over the Python API (:func:`pyro_vae.fit`, :func:`pyro_vae.load_run`).

Errors a user can cause print one line, ``error: ...``, and exit with code 2; a diverged training
run exits with code 1 and keeps its last good checkpoint.
"""

import errno
import json
import logging
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from .config import LEGACY_OPTIONS, LR_SCHEDULES, Config
from .data.sources import DATASETS
from .errors import TrainingDiverged, TrainingInterrupted, UserError
from .train.build import OPTIMIZERS, make_config
from .vae.guides import GUIDES
from .vae.likelihoods import LIKELIHOODS, likelihood_options
from .vae.nets import ACTIVATIONS, ARCHITECTURES
from .vae.objectives import OBJECTIVES
from .vae.preprocessing import Binarize
from .vae.priors import PRIORS, FlowPrior, MixturePrior, VampPrior

DEFAULTS = Config()


def _choice(registry):
    return click.Choice(registry.names() if hasattr(registry, "names") else list(registry))


def fit_options(f):
    """The options shared by every command that trains (``fit`` and later ``compare``)."""
    options = [
        click.option("--dataset", default=DEFAULTS.dataset, show_default=True, type=_choice(DATASETS),
                     help="Registered dataset (ignored with --data)."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Folder holding the data files [default: $PYRO_VAE_DATA, else ~/.cache/pyro-vae]."),
        click.option("--data", type=click.Path(), default=None,
                     help="Train on your own array (.npy, .npz or .pt of shape (N, ...)) or folder of PNG/JPEG images."),
        click.option("--layout", default=None, type=click.Choice(["nchw", "nhwc"]),
                     help="How a 4-d --data array holds its images, when its shape leaves it open [default: detected]."),
        click.option("--image-size", default=None, metavar="H[,W]",
                     help="Resize the images of a --data folder to H x W (one number: square)."),
        click.option("--test-data", type=click.Path(dir_okay=False), default=None,
                     help="Test array for --data [default: a fixed 10% split of --data]."),
        click.option("--binarize", default=None, type=click.Choice(Binarize.MODES),
                     help="How the bernoulli family binarizes grayscale data "
                          f"[default: {likelihood_options('bernoulli')['binarize']}]."),
        click.option("--min-scale", default=None, type=click.FloatRange(min=0, min_open=True),
                     help="Smallest scale of the gaussian and laplace families "
                          f"[default: {likelihood_options('gaussian')['min_scale']}]."),
        click.option("--sigma", default=None, type=click.FloatRange(min=0, min_open=True),
                     help="The fixed standard deviation of the gaussian-fixed family "
                          f"[default: {likelihood_options('gaussian-fixed')['sigma']}]."),
        click.option("--mixtures", default=None, type=click.IntRange(1),
                     help="Components K per value of the discretized-logistic-mixture family "
                          f"[default: {likelihood_options('discretized-logistic-mixture')['mixtures']}]."),
        click.option("--z-dim", default=DEFAULTS.z_dim, show_default=True, type=click.IntRange(1),
                     help="Latent size; 2 also draws the latent manifold."),
        click.option("--arch", default=DEFAULTS.arch, show_default=True, metavar="NAME|FILE.py:CLASS|MODULE:CLASS",
                     help=f"Network architecture of the encoder and decoder: {', '.join(ARCHITECTURES.names())}, "
                          "or your own class (see docs/guides.md)."),
        click.option("--channels", default=",".join(map(str, DEFAULTS.channels)), show_default=True,
                     help="Convolution widths of the conv and resnet nets, from the image inwards (the decoder "
                          "uses them reversed)."),
        click.option("--hidden", default=",".join(map(str, DEFAULTS.hidden)), show_default=True,
                     help="Hidden layer sizes of encoder and decoder, e.g. 500 or 200,200."),
        click.option("--activation", default=DEFAULTS.activation, show_default=True,
                     type=click.Choice(list(ACTIVATIONS)), help="Hidden nonlinearity of both nets."),
        click.option("--guide", default=DEFAULTS.guide, show_default=True, metavar="NAME|FILE.py:CLASS|MODULE:CLASS",
                     help=f"The guide q(z|x): {', '.join(GUIDES.names())}, or your own class "
                          "(see docs/guides.md)."),
        click.option("--flow-steps", default=None, type=click.IntRange(1),
                     help="Flow steps K of the iaf and planar guides [default: iaf 2, planar 10]."),
        click.option("--prior", default=DEFAULTS.prior, show_default=True, metavar="NAME|FILE.py:CLASS|MODULE:CLASS",
                     help=f"The prior p(z): {', '.join(PRIORS.names())} (standard is N(0, I)), or your own class "
                          "(see docs/guides.md)."),
        click.option("--prior-components", default=None, type=click.IntRange(1),
                     help="Components K of the mog and vamp priors (vamp: pseudo-inputs) "
                          f"[default: mog {MixturePrior.DEFAULT_COMPONENTS}, vamp {VampPrior.DEFAULT_COMPONENTS}]."),
        click.option("--prior-flow-steps", default=None, type=click.IntRange(1),
                     help=f"Transforms of the flow prior [default: {FlowPrior.DEFAULT_FLOW_STEPS}]."),
        click.option("--objective", default=DEFAULTS.objective, show_default=True, type=_choice(OBJECTIVES),
                     help="Training objective: elbo (estimator A), elbo-analytic (estimator B), iwae, rws."),
        click.option("--particles", default=DEFAULTS.particles, show_default=True, type=click.IntRange(1),
                     help="Samples K of z per datapoint and step (vectorized); iwae and rws need K >= 2."),
        click.option("--optimizer", default=DEFAULTS.optimizer, show_default=True, type=_choice(OPTIMIZERS),
                     help="pyro.optim optimizer (Adagrad is the paper's)."),
        click.option("--lr", default=DEFAULTS.lr, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     help="Learning rate."),
        click.option("--weight-decay", default=DEFAULTS.weight_decay, show_default=True, type=click.FloatRange(min=0),
                     help="L2 penalty of the optimizer (its weight_decay argument)."),
        click.option("--clip-norm", default=None, type=click.FloatRange(min=0, min_open=True),
                     help="Clip the global gradient norm to this before each step (runs Pyro's own SVI.step path) "
                          "[default: no clipping]."),
        click.option("--lr-schedule", default=DEFAULTS.lr_schedule, show_default=True, type=click.Choice(LR_SCHEDULES),
                     help="Learning-rate schedule per epoch (torch.optim.lr_scheduler); plateau watches the "
                          "validation ELBO; cosine anneals to 0 over --epochs."),
        click.option("--lr-step", default=None, type=click.IntRange(1),
                     help="Epochs: the step size of --lr-schedule step, the patience of plateau [default: 10]."),
        click.option("--lr-gamma", default=None, type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
                     help="Decay factor of step, exponential and plateau [default: 0.1, 0.95 per epoch, 0.1]."),
        click.option("--lr-warmup", default=DEFAULTS.lr_warmup, show_default=True, type=click.IntRange(0),
                     help="Steps of linear learning-rate warm-up from lr/STEPS to lr."),
        click.option("--beta", default=DEFAULTS.beta, show_default=True, type=click.FloatRange(min=0),
                     help="Weight of the KL term (beta-VAE); the validation and test ELBOs stay the true ELBO (beta = 1), "
                          "the train column is then the training objective."),
        click.option("--kl-warmup", default=DEFAULTS.kl_warmup, show_default=True, type=click.FloatRange(min=0),
                     help="Epochs of linear KL warm-up from 0 to --beta (per step)."),
        click.option("--free-bits", default=DEFAULTS.free_bits, show_default=True, type=click.FloatRange(min=0),
                     help="Free bits: nats per latent unit the KL is not penalized below (diagonal guide)."),
        click.option("--early-stopping", default=None, type=click.IntRange(1), metavar="PATIENCE",
                     help="Stop after PATIENCE epochs without a better validation ELBO [default: never]."),
        click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True, type=click.IntRange(1),
                     help="Minibatch size M."),
        click.option("--epochs", default=DEFAULTS.epochs, show_default=True, type=click.IntRange(0),
                     help="Passes over the training data (the total, also with --resume)."),
        click.option("--seed", default=DEFAULTS.seed, show_default=True, type=int,
                     help="Seeds initialization, shuffling and noise; a CPU run repeats exactly."),
        click.option("--device", default=DEFAULTS.device, show_default=True,
                     help="auto (CUDA when available), cpu, cuda or mps (Apple GPUs, where PyTorch offers it)."),
        click.option("--stream", is_flag=True,
                     help="Keep the data in host memory and stream minibatches to the device through a DataLoader "
                          "[default: automatic when the data would not fit on the device]."),
        click.option("--quiet", is_flag=True,
                     help="No progress bar, no per-epoch lines (printed when stderr is not a terminal), no summary."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def settings_from(kwargs):
    """The :class:`Config` fields and part options (``--binarize``, ``--flow-steps``, ...) among a
    command's keyword arguments; options left at ``None`` are not given."""
    return {k: v for k, v in kwargs.items() if k in Config.__dataclass_fields__ or (k in LEGACY_OPTIONS and v is not None)}


def _untrusted_code(found, given, source, trust_guide):
    """Refuse code (``--guide``/``--arch`` as ``file.py:Name`` or ``module:Name``) that settings read from
    ``source`` name, unless ``--trust-guide`` or the flag given on the command line overrides it."""
    from .user_code import check_code_trusted

    check_code_trusted({k: v for k, v in found.items() if k not in given}, source, trust_guide)


def _resume_settings(ctx, settings, out, trust_guide=False):
    """The saved settings of the run in ``out``, overridden by the flags given on the command line."""
    from .checkpoint import load_checkpoint

    if out is None:
        raise UserError("--resume needs --out RUN_DIR, the run to continue")
    import torch

    saved = Config.from_dict(load_checkpoint(Path(out) / "checkpoint.pt")["config"])
    given = {k: v for k, v in settings.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    _untrusted_code(saved.to_dict(), given, f"the run in {out}", trust_guide)
    if "device" not in given and saved.device.startswith("cuda") and not torch.cuda.is_available():
        click.echo(f"note: the run was trained with --device {saved.device}; no CUDA GPU here, so it continues "
                   "on the CPU (give --device to choose)", err=True)  # fmt: skip
        given["device"] = "cpu"
    return make_config(saved, **given)


def trust_options(f):
    """``--trust-guide``, ``--guide`` and ``--arch``: allow a run folder's guide or architecture code to run
    (see :func:`~pyro_vae.runs.run.load_run`)."""
    f = click.option("--arch", "arch", default=None, metavar="FILE.py:CLASS|MODULE:CLASS",
                     help="Allow the run's architecture code by naming it again, exactly as its config.json does.")(f)
    f = click.option("--guide", "guide", default=None, metavar="FILE.py:CLASS|MODULE:CLASS",
                     help="Allow the run's guide code by naming it again, exactly as its config.json does.")(f)
    return click.option("--trust-guide", is_flag=True,
                        help="Run the code (file.py:Name or module:Name) the run folder names as its guide, prior, "
                             "architecture or likelihood (the copy in the run folder, checked against its hash).")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pyro-vae")
def cli():
    """Auto-Encoding Variational Bayes (Kingma & Welling 2013) with Pyro."""


@cli.command()
@click.option("--likelihood", default=DEFAULTS.likelihood, show_default=True, metavar="NAME|FILE.py:CLASS|MODULE:CLASS",
              help=f"The family p(x|z) of the decoder: {', '.join(LIKELIHOODS.names())}, or your own subclass of "
                   "pyro_vae.Likelihood (see docs/guides.md).")  # fmt: skip
@fit_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder [default: a new folder under runs/].")  # fmt: skip
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint (e.g. with more --epochs).")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--compile", "compile_loss", is_flag=True,
              help="torch.compile (inductor) the captured loss graph: faster steps after a compile per batch "
                   "shape; float rounding changes slightly.")  # fmt: skip
@click.option("--no-capture", is_flag=True,
              help="Run Pyro's tracing every step instead of replaying the loss captured as a graph "
                   "(for a guide whose structure changes between batches).")  # fmt: skip
@click.option("--devices", default=1, show_default=True, type=click.IntRange(1),
              help="Data-parallel processes on this node (DDP): one per GPU, or CPU processes (see docs/scaling.md).")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
              help="bf16: the networks under autocast, the ELBO in fp32 (CUDA, or a CPU with AVX512_BF16 or AMX).")
@click.option("--logger", "logger_names", multiple=True, type=click.Choice(["csv", "tensorboard", "mlflow"]),
              help="Log scalars, images and the config; repeat for several (tensorboard and mlflow are extras).")
@click.option("--log-images-every", default=5, show_default=True, type=click.IntRange(0), metavar="N",
              help="Log samples and reconstructions every N epochs and at the last (0: the last only).")
@click.option("--conditional", is_flag=True,
              help="The conditional VAE p(x|z,y), q(z|x,y): the label enters both nets (labelled data).")
@click.option("--semi-supervised", is_flag=True,
              help="M2 of Kingma et al. (2014): the label a latent variable, summed out by enumeration where unknown.")
@click.option("--labelled", default=None, type=click.IntRange(1), metavar="N",
              help="--semi-supervised: labelled training items, balanced over the classes [default: 100].")
@click.option("--alpha", default=DEFAULTS.alpha, show_default=True, type=click.FloatRange(min=0),
              help="--semi-supervised: weight of the classification loss on labelled items (the paper's eq. 9).")
@click.option("--config", "config_file", type=click.Path(), default=None, metavar="FILE",
              help="Start from the settings in a JSON, YAML or TOML file (or a run folder); flags override it.")
@click.option("--print-config", is_flag=True, help="Print the resolved settings as JSON and exit.")
@click.option("--trust-guide", is_flag=True,
              help="Run the guide or architecture code (file.py:Name or module:Name) that a --config file or the "
                   "run resumed names (not needed for code you name with --guide or --arch).")  # fmt: skip
@click.pass_context
def fit(ctx, out, resume, overwrite, quiet, compile_loss, no_capture, devices, precision, logger_names,
        log_images_every, config_file, print_config, trust_guide, **kwargs):  # fmt: skip
    """Train a VAE and write a run folder (config, metrics, checkpoints, pictures)."""
    from .runs.fit import fit as fit_run
    from .speed import Speed

    settings = settings_from(kwargs)
    if resume:
        if config_file:
            raise UserError("--config and --resume exclude each other: a resumed run keeps its saved settings")
        # a resumed run keeps its saved settings; flags given on the command line must agree with them
        config = _resume_settings(ctx, settings, out, trust_guide)
    elif config_file:
        config = _file_settings(ctx, settings, config_file, trust_guide)
    else:
        config = make_config(None, **settings)
    if print_config:
        click.echo(json.dumps(config.to_dict(), indent=2))
        return
    speed = Speed(capture=not no_capture, compile="inductor" if compile_loss else None)
    fit_run(config, out, resume=resume, overwrite=overwrite, quiet=quiet, speed=speed, devices=devices,
            precision=precision, loggers=list(logger_names), log_images_every=log_images_every)  # fmt: skip


def _file_settings(ctx, settings, path, trust_guide=False):
    """The settings of the file ``path`` (:func:`~pyro_vae.config_files.read_config_file`), overridden by
    the flags given on the command line (click's ``ParameterSource.COMMANDLINE``). Code the file names
    as its guide or architecture is refused unless ``--trust-guide`` (or the flag overrides it)."""
    from .config_files import read_config_file

    found = read_config_file(path)
    given = {k: v for k, v in settings.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    source = f"the run in {path}" if Path(path).is_dir() else f"the config file {path}"
    _untrusted_code(found, given, source, trust_guide)
    base = make_config(None, **found)
    return make_config(base, **given)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--samples", default=1000, show_default=True, type=click.IntRange(1),
              help="Importance samples K per test item.")  # fmt: skip
@click.option("--subset", default=None, type=click.IntRange(1), help="Use only the first N test items.")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
              help="Seeds the draws of z: the same seed gives the same numbers.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--checkpoint", default="best", show_default=True, type=click.Choice(["best", "last"]),
              help="best.pt (the best validation ELBO) or checkpoint.pt (the last epoch).")
@trust_options
def evaluate(run_dir, samples, subset, device, seed, as_json, checkpoint, trust_guide, guide, arch):
    """Test ELBO (with its reconstruction and KL terms), importance-sampled log-likelihood, bits/dim
    and active units of a trained run."""
    from tqdm.auto import tqdm

    from .runs.run import load_run, write_evaluation

    run = load_run(run_dir, device, checkpoint=checkpoint, trust_guide=trust_guide, guide=guide, arch=arch)
    n = min(subset or run.meta["n_test"], run.meta["n_test"])
    with tqdm(total=n, desc="evaluate", unit="item", disable=as_json or not sys.stderr.isatty(), leave=False) as bar:
        result = run.evaluate(samples=samples, subset=subset, progress=bar.update, seed=seed)
    try:
        write_evaluation(run, result)
    except UserError as e:  # a read-only run folder, a full disk: the numbers still count
        click.echo(f"note: {e}; the results are printed only", err=True)
    if as_json:
        click.echo(json.dumps(result))
    elif run.labelled:
        click.echo(
            f"test ELBO {result['test_elbo']:.3f} nats, {result['log_likelihood_of']} >= "
            f"{result['test_log_likelihood']:.3f} nats ({result['samples']} importance samples per class, "
            f"{result['items']} test items)"
            + ("" if result["test_error"] is None else f"; test classification error of q(y|x) "
               f"{100 * result['test_error']:.2f}%")
        )
    else:
        click.echo(
            f"test ELBO {result['test_elbo']:.3f} nats, log p(x) >= {result['test_log_likelihood']:.3f} nats "
            f"({result['samples']} importance samples, {result['items']} test items)"
        )
        click.echo(
            f"ELBO = reconstruction {result['reconstruction']:.3f} - KL {result['kl']:.3f} nats (KL: "
            f"{result['kl_estimate']}); "
            f"{result['active_units']} active latent units"
        )
        if result["bits_per_dim"] is not None:
            shift = result["dequantization_nats"]
            note = f" (density minus {shift:.1f} nats of dequantization)" if shift else ""
            click.echo(
                f"scored on {result['representation']}: log P(x) >= {result['discrete_test_log_likelihood']:.3f} "
                f"nats{note}, {result['bits_per_dim']:.4f} bits/dim"
            )


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-n", "--num", default=64, show_default=True, type=click.IntRange(1), help="How many samples.")
@click.option("-o", "--output", default="samples.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG file to write.")  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**64 - 1))
@click.option("--device", default="auto", show_default=True)
@click.option("--checkpoint", default="best", show_default=True, type=click.Choice(["best", "last"]),
              help="best.pt (the best validation ELBO) or checkpoint.pt (the last epoch).")
@click.option("--label", default=None, type=int, metavar="Y",
              help="A run with labels: draw every sample with class Y [default: one row per class].")
@trust_options
def sample(run_dir, num, output, seed, device, checkpoint, label, trust_guide, guide, arch):
    """Draw z from the prior and save the decoder means as a PNG grid (a run with labels: one row per class,
    or all of class --label)."""
    from .runs.run import load_run

    if not output.lower().endswith(".png"):
        raise UserError(f"-o must name a .png file, got {output}")
    if not Path(output).parent.is_dir():
        raise UserError(f"cannot write {output}: the folder {Path(output).parent} does not exist")
    run = load_run(run_dir, device, checkpoint=checkpoint, trust_guide=trust_guide, guide=guide, arch=arch)
    run.save_samples(output, n=num, seed=seed, label=label)
    if run.labelled and label is None:
        columns = -(-num // run.vae.num_classes)
        click.echo(f"wrote {run.vae.num_classes} rows (one per class) of {columns} samples to {output}")
    else:
        click.echo(f"wrote {num} samples{'' if label is None else f' of class {label}'} to {output}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", default=None, type=click.Path(file_okay=False),
              help="The export folder [default: RUN_DIR-export beside the run].")
@click.option("--checkpoint", default="best", show_default=True, type=click.Choice(["best", "last"]),
              help="best.pt (the best validation ELBO) or checkpoint.pt (the last epoch).")
@click.option("--eval-samples", default=100, show_default=True, type=click.IntRange(1),
              help="Importance samples K per test item for the model card's log p(x), when the run has no "
                   "evaluation.json of the best checkpoint.")
@click.option("--eval-subset", default=None, type=click.IntRange(1), help="Evaluate on the first N test items only.")
@click.option("--overwrite", is_flag=True, help="Write into an export folder that is not empty.")
@click.option("--onnx", is_flag=True, help="Also write encoder.onnx and decoder.onnx (needs the onnx extra).")
@trust_options
def export(run_dir, output, checkpoint, eval_samples, eval_subset, overwrite, onnx, trust_guide, guide, arch):
    """Write the run for use without pyro-vae: weights (safetensors), the encoder and decoder as
    torch.export programs that need only PyTorch, and a model card (README.md) with scores and pictures."""
    from .runs.export import export_run
    from .runs.run import load_run

    output = output or f"{str(run_dir).rstrip('/')}-export"
    run = load_run(run_dir, "cpu", checkpoint=checkpoint, trust_guide=trust_guide, guide=guide, arch=arch)
    manifest = export_run(run, output, eval_samples=eval_samples, eval_subset=eval_subset, overwrite=overwrite,
                          onnx=onnx)  # fmt: skip
    if manifest["encoder_skipped"]:
        click.echo(f"note: no encoder program: {manifest['encoder_skipped']}", err=True)
    click.echo(f"exported {', '.join(manifest['files'])} to {output}")


def compare_fit_options(f):
    """:func:`fit_options` with the options of :data:`pyro_vae.analysis.compare.AXES` repeatable (``--guide A --guide B``)."""
    from .analysis.compare import axes

    repeatable = {a.field for a in axes()} - {"likelihood"}
    params = getattr(f, "__click_params__", None)
    if params is None:
        params = f.__click_params__ = []
    for p in fit_options(lambda **kwargs: None).__click_params__:
        if p.name in repeatable:
            p = click.Option(p.opts, multiple=True, type=p.type, metavar=p.metavar,
                             help=f"{p.help} Repeat to compare several [default: {p.default}].")  # fmt: skip
        params.append(p)
    return f


@cli.command()
@click.option("--likelihood", "likelihoods", multiple=True, metavar="NAME|FILE.py:CLASS|MODULE:CLASS",
              help="A family to compare; repeat the option for several [default: every family that fits the data, "
                   "unless another setting varies].")  # fmt: skip
@compare_fit_options
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(1),
              help="Seeds per family: --seed, --seed + 1, ...; the table shows mean ± std over them.")
@click.option("--eval-samples", default=100, show_default=True, type=click.IntRange(1),
              help="Importance samples K per test item for log p(x).")
@click.option("--eval-subset", default=None, type=click.IntRange(1),
              help="Evaluate on the first N test items [default: all].")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the run folders and comparison.{md,csv,json,png}.")
@click.option("--overwrite", is_flag=True,
              help="Retrain runs already in --out [default: reuse finished runs with the same settings, resume others].")
@click.option("--config", "config_file", type=click.Path(), default=None, metavar="FILE",
              help="Start from the settings in a JSON, YAML or TOML file (or a run folder); flags override it.")
@click.option("--logger", "logger_names", multiple=True, type=click.Choice(["csv", "tensorboard", "mlflow"]),
              help="Log every run (as fit --logger); repeat for several.")
@click.option("--devices", default=1, show_default=True, type=click.IntRange(1),
              help="Data-parallel processes per run (as fit --devices).")
@click.pass_context
def compare(ctx, likelihoods, seeds, eval_samples, eval_subset, out, overwrite, config_file, logger_names, devices, quiet,
            **kwargs):  # fmt: skip
    """Train a grid of configurations (repeat --likelihood, --guide, --objective, --particles, --z-dim,
    --hidden, --arch) with the same data, optimizer, budget and seeds, and compare test ELBO, log p(x),
    bits/dim, active units and training time, with paired differences over test items (configurations
    scored on different data are grouped apart)."""
    import contextlib

    from tqdm.auto import tqdm

    from .analysis.compare import axes
    from .analysis.compare import compare as run_comparison

    grid = {a.field: list(kwargs.pop(a.field)) for a in axes() if a.field in kwargs}

    show = not quiet and sys.stderr.isatty()

    def bar(total, desc):
        return tqdm(total=total, desc=desc, unit="item", leave=False) if show else contextlib.nullcontext(_NoBar())

    settings = settings_from(kwargs)
    config = _file_settings(ctx, settings, config_file) if config_file else make_config(None, **settings)
    result = run_comparison(
        config, out, likelihoods=list(likelihoods) or None, grid=grid, seeds=seeds,
        eval_samples=eval_samples, eval_subset=eval_subset, overwrite=overwrite,
        progress=None if quiet else (lambda line: click.echo(line, err=True)), eval_progress=bar,
        loggers=list(logger_names), devices=devices,
    )  # fmt: skip
    if not quiet:
        click.echo(result.markdown())
        click.echo(f"wrote {Path(out) / 'comparison.md'}, .csv, .json, .png and comparison-pareto.png")


# The latent space of a trained run (pyro_vae.runs.latent) ------------------------------------------------


def _split_options(f):
    """``--split`` / ``--data`` / ``--device`` / ``--seed`` of the latent commands."""
    options = [
        click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]),
                     help="Which of the run's data to use: its training, validation or test items."),
        click.option("--data", "data_file", type=click.Path(dir_okay=False), default=None,
                     help="Use your own array (.npy/.npz/.pt of items of the run's size) instead of --split."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seeds the posterior draws."),
        click.option("--device", default="auto", show_default=True),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def _label_options(label=False):
    """``--labels`` / ``--use-classifier`` (and ``--label``) of the latent commands: which labels a run with labels
    (``--conditional``, ``--semi-supervised``) gives its guide q(z|x,y) (pyro_vae.runs.latent.run_labels)."""

    def decorate(f):
        options = [
            click.option("--labels", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                         help="A .npy of shape (N,): the items' labels, replacing the data's own [default: the "
                              "split's labels, or those stored in the --data file]. A --conditional run needs "
                              "labels; a --semi-supervised run without any uses its classifier's most probable "
                              "class."),
            click.option("--use-classifier", is_flag=True,
                         help="A --semi-supervised run: give q(z|x,y) the classifier's most probable class "
                              "argmax q(y|x), even where the data has labels."),
        ]  # fmt: skip
        if label:
            options.append(click.option("--label", default=None, type=int, metavar="Y", help=label))
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _output(path, suffixes):
    if Path(path).suffix.lower() not in suffixes:
        raise UserError(f"-o must name a {' or '.join(suffixes)} file, got {path}")
    if not Path(path).absolute().parent.is_dir():
        raise UserError(f"cannot write {path}: the folder {Path(path).absolute().parent} does not exist")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="z.npy (labels beside it in z.labels.npy) or z.csv (a label column).")  # fmt: skip
@click.option("--what", default="mean", show_default=True, type=click.Choice(["mean", "scale", "samples"]),
              help="Posterior means, per-unit standard deviations, or K draws per item.")  # fmt: skip
@click.option("--samples", default=None, type=click.IntRange(1),
              help="K: draws per item for --what samples [default 1]; Monte Carlo draws for a flow guide's "
                   "mean and scale [default 256].")  # fmt: skip
@_label_options()
@_split_options
@trust_options
def encode(run_dir, output, what, samples, labels, use_classifier, split, data_file, seed, device, trust_guide, guide,
           arch):  # fmt: skip
    """Encode data with the run's guide q(z|x) and save the codes (and labels when known).

    A run with labels encodes with q(z|x,y): a --conditional run with the items' labels (the split's, the --data
    file's, or --labels), a --semi-supervised run with them too when there are any, else (or with
    --use-classifier) with the classifier's most probable class. The labels saved beside the codes are the
    labels used, and the output line says where they came from."""
    from .runs.run import load_run

    _output(output, (".npy", ".csv"))
    from .runs.latent import encode_run, labels_path

    run = load_run(run_dir, device, trust_guide=trust_guide, guide=guide, arch=arch)
    result = encode_run(run, split=split, data=data_file, what=what, samples=samples, labels=labels, path=output,
                        seed=seed, use_classifier=use_classifier)  # fmt: skip
    codes, labels = result
    beside = "" if labels is None else (" with labels" + (f" in {labels_path(output)}" if output.lower().endswith(".npy") else ""))
    used = "" if result.source is None else f" (q(z|x,y), y: {result.source})"
    click.echo(f"wrote {what} codes of shape {tuple(codes.shape)} to {output}{beside}{used}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("-n", "--num", default=16, show_default=True, type=click.IntRange(1), help="How many items.")
@click.option("--sample", is_flag=True, help="Decode one draw from q(z|x) instead of its mean.")
@_label_options()
@_split_options
@trust_options
def reconstruct(run_dir, output, num, sample, labels, use_classifier, split, data_file, seed, device, trust_guide,
                guide, arch):  # fmt: skip
    """Save items (top row) above their reconstructions as a PNG.

    A run with labels encodes each item with q(z|x,y) and decodes it with the same y: the items' labels (as for
    encode; the title says which)."""
    from .runs.run import load_run

    _output(output, (".png",))
    run = load_run(run_dir, device, trust_guide=trust_guide, guide=guide, arch=arch)
    recon = run.save_reconstructions(output, num, split, data_file, sample, seed, labels, use_classifier)
    click.echo(f"wrote {len(recon)} items and their reconstructions to {output}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--items", nargs=2, type=int, required=True, metavar="I J", help="The two items (indices) to join.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(2), help="Codes on the path, ends included.")
@click.option("--slerp", is_flag=True, help="Spherical instead of straight path.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@_label_options(label="A run with labels: decode the path with class Y [default: the two items' common label].")
@_split_options
@trust_options
def interpolate(run_dir, items, steps, slerp, output, labels, use_classifier, label, split, data_file, seed, device,
                trust_guide, guide, arch):  # fmt: skip
    """Decode the path between two items' posterior means (one row, the two items at its ends).

    A run with labels encodes each item with its own label, q(z|x_i,y_i) (labels as for encode), and decodes
    the whole path with one class held fixed: --label, by default the items' common label (items of two
    different labels need --label)."""
    from .runs.run import load_run

    _output(output, (".png",))
    run = load_run(run_dir, device, trust_guide=trust_guide, guide=guide, arch=arch)
    run.interpolate(items[0], items[1], steps, slerp, split, data_file, output, seed, label, labels, use_classifier)
    click.echo(f"wrote a {steps}-step {'spherical' if slerp else 'linear'} interpolation to {output}")


def _units(spec):
    if spec is None:
        return None
    try:
        units = [int(u) for u in spec.replace(" ", "").split(",") if u]
    except ValueError:
        raise UserError(f"--units takes unit indices like 0,3,5, got {spec!r}") from None
    if not units:
        raise UserError(f"--units takes unit indices like 0,3,5, got {spec!r}")
    return units


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--units", default=None, help="Units to vary, e.g. 0,3,5 [default: all, ordered by their KL].")
@click.option("--top", default=None, type=click.IntRange(1), help="Show only the first N units of that order.")
@click.option("--range", "span", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Each unit goes from -R to R (prior standard deviations).")  # fmt: skip
@click.option("--steps", default=9, show_default=True, type=click.IntRange(2), help="Images per unit.")
@click.option("--item", default=None, type=click.IntRange(0),
              help="Start from this item's posterior mean [default: the prior mean 0].")  # fmt: skip
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@_label_options(label="A run with labels: decode with class Y [default: --item's label; without --item, every "
                      "class, one row each].")
@_split_options
@trust_options
def traverse(run_dir, units, top, span, steps, item, output, labels, use_classifier, label, split, data_file, seed,
             device, trust_guide, guide, arch):  # fmt: skip
    """Latent traversals: one row per unit, the others held fixed, units ordered by their KL over the data.

    A run with labels: the KL is that of q(z|x,y) with the items' labels (as for encode); the images are decoded
    with the class --label, by default --item's label, and with neither, with every class: one block of one row
    per class for each unit (use --top or --units to keep it short)."""
    from .runs.run import load_run

    _output(output, (".png",))
    run = load_run(run_dir, device, trust_guide=trust_guide, guide=guide, arch=arch)
    order, kl, images = run.traverse(_units(units), span, steps, item, top, split, data_file, output, seed, label,
                                     labels, use_classifier)  # fmt: skip
    shown = ", ".join(f"z{u} ({k:.2f} nats)" for u, k in zip(order, kl))
    every = f", each with all {images.shape[1]} classes" if images.ndim == 4 else ""
    click.echo(f"wrote traversals of {len(order)} units{every} to {output}: {shown}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", default="latents.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG file to write.")  # fmt: skip
@click.option("--method", default="auto", show_default=True, type=click.Choice(["auto", "pca", "tsne"]),
              help="z = 2: the plane itself; else PCA (auto) or t-SNE (slow beyond a few thousand items).")  # fmt: skip
@_label_options()
@_split_options
@trust_options
def latents(run_dir, output, method, labels, use_classifier, split, data_file, seed, device, trust_guide, guide, arch):
    """Scatter the posterior means, coloured by label when the data has labels.

    A run with labels scatters the means of q(z|x,y), coloured by the y given (labels as for encode; the title
    says which): with z meant to hold what the label does not, the classes should mix."""
    from .runs.run import load_run

    _output(output, (".png",))
    run = load_run(run_dir, device, trust_guide=trust_guide, guide=guide, arch=arch)
    coords, used = run.latents(output, method, split, data_file, labels, seed, use_classifier)
    click.echo(f"wrote a scatter of {len(coords)} posterior means ({used}) to {output}")


class _NoBar:
    def update(self, n):
        pass


class EchoHandler(logging.Handler):
    """Prints the library's messages (the ``logging`` logger ``"pyro_vae"``) as the CLI always has:
    information on stdout as it is, warnings and errors on stderr as ``warning: ...``."""

    def emit(self, record):
        try:
            message = self.format(record)
        except Exception:  # a message that cannot be formatted: logging's own report
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            click.echo(f"{record.levelname.lower()}: {message}", err=True)
        else:
            click.echo(message)


def main(argv=None):
    """Entry point of the ``pyro-vae`` console script and of ``python cli.py``."""
    log = logging.getLogger("pyro_vae")
    handler, level = EchoHandler(), log.level
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        return _main(argv)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _main(argv):
    try:
        cli.main(args=argv, prog_name="pyro-vae", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort as e:  # click turns a KeyboardInterrupt into Abort
        cause = e.__cause__ or e.__context__
        if isinstance(cause, TrainingInterrupted):
            click.echo(f"error: {cause}", err=True)
        elif isinstance(cause, KeyboardInterrupt):
            click.echo("interrupted", err=True)
        else:
            click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:  # bad flags, missing arguments
        click.echo(f"error: {e.format_message()}", err=True)
        return 2
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except TrainingDiverged as e:
        click.echo(f"error: {e}", err=True)
        return 1
    except TrainingInterrupted as e:
        click.echo(f"error: {e}", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except OSError as e:  # the backstop: places that write files turn their errors into UserError first
        what = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        click.echo(f"error: {what}" + (f": {e.filename}" if e.filename else ""), err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
