"""The ``pyro-vae`` command line: a thin layer over the Python API (:func:`pyro_vae.fit`, :func:`pyro_vae.load_run`).

Errors a user can cause print one line, ``error: ...``, and exit with code 2; a diverged training
run exits with code 1 and keeps its last good checkpoint.
"""

import errno
import json
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


def _resume_settings(ctx, settings, out):
    """The saved settings of the run in ``out``, overridden by the flags given on the command line."""
    from .checkpoint import load_checkpoint

    if out is None:
        raise UserError("--resume needs --out RUN_DIR, the run to continue")
    import torch

    saved = Config.from_dict(load_checkpoint(Path(out) / "checkpoint.pt")["config"])
    given = {k: v for k, v in settings.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    if "device" not in given and saved.device.startswith("cuda") and not torch.cuda.is_available():
        click.echo(f"note: the run was trained with --device {saved.device}; no CUDA GPU here, so it continues "
                   "on the CPU (give --device to choose)", err=True)  # fmt: skip
        given["device"] = "cpu"
    return make_config(saved, **given)


def trust_options(f):
    """``--trust-guide`` and ``--guide``: allow a run folder's guide code to run (see :func:`~pyro_vae.runs.run.load_run`)."""
    f = click.option("--guide", "guide", default=None, metavar="FILE.py:CLASS|MODULE:CLASS",
                     help="Allow the run's guide code by naming it again, exactly as its config.json does.")(f)
    return click.option("--trust-guide", is_flag=True,
                        help="Run the guide code (file.py:Name or module:Name) the run folder names.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pyro-vae")
def cli():
    """Auto-Encoding Variational Bayes (Kingma & Welling 2013) with Pyro."""


@cli.command()
@click.option("--likelihood", default=DEFAULTS.likelihood, show_default=True, type=_choice(LIKELIHOODS),
              help="The family p(x|z) of the decoder.")  # fmt: skip
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
@click.option("--config", "config_file", type=click.Path(), default=None, metavar="FILE",
              help="Start from the settings in a JSON, YAML or TOML file (or a run folder); flags override it.")
@click.option("--print-config", is_flag=True, help="Print the resolved settings as JSON and exit.")
@click.pass_context
def fit(ctx, out, resume, overwrite, quiet, compile_loss, no_capture, devices, precision, logger_names,
        log_images_every, config_file, print_config, **kwargs):  # fmt: skip
    """Train a VAE and write a run folder (config, metrics, checkpoints, pictures)."""
    from .runs.launch import fit as fit_run
    from .speed import Speed

    settings = settings_from(kwargs)
    if resume:
        if config_file:
            raise UserError("--config and --resume exclude each other: a resumed run keeps its saved settings")
        # a resumed run keeps its saved settings; flags given on the command line must agree with them
        config = _resume_settings(ctx, settings, out)
    elif config_file:
        config = _file_settings(ctx, settings, config_file)
    else:
        config = make_config(None, **settings)
    if print_config:
        click.echo(json.dumps(config.to_dict(), indent=2))
        return
    speed = Speed(capture=not no_capture, compile="inductor" if compile_loss else None)
    fit_run(config, out, resume=resume, overwrite=overwrite, quiet=quiet, speed=speed, devices=devices,
            precision=precision, loggers=list(logger_names), log_images_every=log_images_every)  # fmt: skip


def _file_settings(ctx, settings, path):
    """The settings of the file ``path`` (:func:`~pyro_vae.config_files.read_config_file`), overridden by
    the flags given on the command line (click's ``ParameterSource.COMMANDLINE``)."""
    from .config_files import read_config_file

    base = make_config(None, **read_config_file(path))
    given = {k: v for k, v in settings.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
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
def evaluate(run_dir, samples, subset, device, seed, as_json, checkpoint, trust_guide, guide):
    """Test ELBO (with its reconstruction and KL terms), importance-sampled log-likelihood, bits/dim
    and active units of a trained run."""
    from tqdm.auto import tqdm

    from .runs.run import load_run, write_evaluation

    run = load_run(run_dir, device, checkpoint=checkpoint, trust_guide=trust_guide, guide=guide)
    n = min(subset or run.meta["n_test"], run.meta["n_test"])
    with tqdm(total=n, desc="evaluate", unit="item", disable=as_json or not sys.stderr.isatty(), leave=False) as bar:
        result = run.evaluate(samples=samples, subset=subset, progress=bar.update, seed=seed)
    try:
        write_evaluation(run, result)
    except UserError as e:  # a read-only run folder, a full disk: the numbers still count
        click.echo(f"note: {e}; the results are printed only", err=True)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"test ELBO {result['test_elbo']:.3f} nats, log p(x) >= {result['test_log_likelihood']:.3f} nats "
            f"({result['samples']} importance samples, {result['items']} test items)"
        )
        click.echo(
            f"ELBO = reconstruction {result['reconstruction']:.3f} - KL {result['kl']:.3f} nats; "
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
@trust_options
def sample(run_dir, num, output, seed, device, checkpoint, trust_guide, guide):
    """Draw z from the prior and save the decoder means as a PNG grid."""
    from .runs.run import load_run

    if not output.lower().endswith(".png"):
        raise UserError(f"-o must name a .png file, got {output}")
    if not Path(output).parent.is_dir():
        raise UserError(f"cannot write {output}: the folder {Path(output).parent} does not exist")
    run = load_run(run_dir, device, checkpoint=checkpoint, trust_guide=trust_guide, guide=guide)
    run.save_samples(output, n=num, seed=seed)
    click.echo(f"wrote {num} samples to {output}")


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
@click.option("--likelihood", "likelihoods", multiple=True, type=_choice(LIKELIHOODS),
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
def compare(likelihoods, seeds, eval_samples, eval_subset, out, overwrite, quiet, **kwargs):
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

    result = run_comparison(
        make_config(None, **settings_from(kwargs)), out, likelihoods=list(likelihoods) or None, grid=grid, seeds=seeds,
        eval_samples=eval_samples, eval_subset=eval_subset, overwrite=overwrite,
        progress=None if quiet else (lambda line: click.echo(line, err=True)), eval_progress=bar,
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
@click.option("--labels", type=click.Path(dir_okay=False), default=None, help="A .npy of shape (N,): your labels.")
@_split_options
def encode(run_dir, output, what, samples, labels, split, data_file, seed, device):
    """Encode data with the run's guide q(z|x) and save the codes (and labels when known)."""
    from .runs.run import load_run

    _output(output, (".npy", ".csv"))
    run = load_run(run_dir, device)
    codes, labels = run.encode(split=split, data=data_file, what=what, samples=samples, labels=labels, path=output, seed=seed)
    from .runs.latent import labels_path

    beside = "" if labels is None else (" with labels" + (f" in {labels_path(output)}" if output.lower().endswith(".npy") else ""))
    click.echo(f"wrote {what} codes of shape {tuple(codes.shape)} to {output}{beside}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("-n", "--num", default=16, show_default=True, type=click.IntRange(1), help="How many items.")
@click.option("--sample", is_flag=True, help="Decode one draw from q(z|x) instead of its mean.")
@_split_options
def reconstruct(run_dir, output, num, sample, split, data_file, seed, device):
    """Save items (top row) above their reconstructions as a PNG."""
    from .runs.run import load_run

    _output(output, (".png",))
    run = load_run(run_dir, device)
    recon = run.save_reconstructions(output, num, split, data_file, sample, seed)
    click.echo(f"wrote {len(recon)} items and their reconstructions to {output}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--items", nargs=2, type=int, required=True, metavar="I J", help="The two items (indices) to join.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(2), help="Codes on the path, ends included.")
@click.option("--slerp", is_flag=True, help="Spherical instead of straight path.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@_split_options
def interpolate(run_dir, items, steps, slerp, output, split, data_file, seed, device):
    """Decode the path between two items' posterior means (one row, the two items at its ends)."""
    from .runs.run import load_run

    _output(output, (".png",))
    run = load_run(run_dir, device)
    run.interpolate(items[0], items[1], steps, slerp, split, data_file, output, seed)
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
@_split_options
def traverse(run_dir, units, top, span, steps, item, output, split, data_file, seed, device):
    """Latent traversals: one row per unit, the others held fixed, units ordered by their KL over the data."""
    from .runs.run import load_run

    _output(output, (".png",))
    run = load_run(run_dir, device)
    order, kl, _ = run.traverse(_units(units), span, steps, item, top, split, data_file, output, seed)
    shown = ", ".join(f"z{u} ({k:.2f} nats)" for u, k in zip(order, kl))
    click.echo(f"wrote traversals of {len(order)} units to {output}: {shown}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", default="latents.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG file to write.")  # fmt: skip
@click.option("--method", default="auto", show_default=True, type=click.Choice(["auto", "pca", "tsne"]),
              help="z = 2: the plane itself; else PCA (auto) or t-SNE (slow beyond a few thousand items).")  # fmt: skip
@click.option("--labels", type=click.Path(dir_okay=False), default=None, help="A .npy of shape (N,): your labels.")
@_split_options
def latents(run_dir, output, method, labels, split, data_file, seed, device):
    """Scatter the posterior means, coloured by label when the data has labels."""
    from .runs.run import load_run

    _output(output, (".png",))
    run = load_run(run_dir, device)
    coords, used = run.latents(output, method, split, data_file, labels, seed)
    click.echo(f"wrote a scatter of {len(coords)} posterior means ({used}) to {output}")


class _NoBar:
    def update(self, n):
        pass


def main(argv=None):
    """Entry point of the ``pyro-vae`` console script and of ``python cli.py``."""
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
