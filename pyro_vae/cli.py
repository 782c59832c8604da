"""The ``pyro-vae`` command line: a thin layer over the Python API (:func:`pyro_vae.fit`, :func:`pyro_vae.load_run`).

Errors a user can cause print one line, ``error: ...``, and exit with code 2; a diverged training
run exits with code 1 and keeps its last good checkpoint.
"""

import json
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from .build import OPTIMIZERS, make_config
from .config import LEGACY_OPTIONS, Config
from .data import DATASETS
from .errors import TrainingDiverged, UserError
from .guides import GUIDES
from .likelihoods import LIKELIHOODS, likelihood_options
from .nets import ACTIVATIONS, ARCHITECTURES
from .objectives import OBJECTIVES
from .preprocessing import Binarize

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
        click.option("--jit", is_flag=True, help="Compile the loss with Pyro's JIT (elbo and elbo-analytic only)."),
        click.option("--optimizer", default=DEFAULTS.optimizer, show_default=True, type=_choice(OPTIMIZERS),
                     help="pyro.optim optimizer (Adagrad is the paper's)."),
        click.option("--lr", default=DEFAULTS.lr, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     help="Learning rate."),
        click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True, type=click.IntRange(1),
                     help="Minibatch size M."),
        click.option("--epochs", default=DEFAULTS.epochs, show_default=True, type=click.IntRange(0),
                     help="Passes over the training data (the total, also with --resume)."),
        click.option("--seed", default=DEFAULTS.seed, show_default=True, type=int,
                     help="Seeds initialization, shuffling and noise; a CPU run repeats exactly."),
        click.option("--device", default=DEFAULTS.device, show_default=True,
                     help="auto (CUDA when available), cpu or cuda."),
        click.option("--stream", is_flag=True,
                     help="Keep the data in host memory and stream minibatches to the device through a DataLoader "
                          "[default: automatic when the data would not fit on the device]."),
        click.option("--quiet", is_flag=True, help="No progress bar and no summary line."),
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
    saved = Config.from_dict(load_checkpoint(Path(out) / "checkpoint.pt")["config"])
    given = {k: v for k, v in settings.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    return make_config(saved, **given)


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
@click.pass_context
def fit(ctx, out, resume, overwrite, quiet, compile_loss, no_capture, **kwargs):
    """Train a VAE and write a run folder (config, metrics, checkpoint, pictures)."""
    from .engine import Speed
    from .training import fit as fit_run

    settings = settings_from(kwargs)
    if resume:
        # a resumed run keeps its saved settings; flags given on the command line must agree with them
        config = _resume_settings(ctx, settings, out)
    else:
        config = make_config(None, **settings)
    speed = Speed(capture=not no_capture, compile="inductor" if compile_loss else None)
    fit_run(config, out, resume=resume, overwrite=overwrite, quiet=quiet, speed=speed)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--samples", default=1000, show_default=True, type=click.IntRange(1),
              help="Importance samples K per test item.")  # fmt: skip
@click.option("--subset", default=None, type=click.IntRange(1), help="Use only the first N test items.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def evaluate(run_dir, samples, subset, device, as_json):
    """Test ELBO (with its reconstruction and KL terms), importance-sampled log-likelihood, bits/dim
    and active units of a trained run."""
    from tqdm.auto import tqdm

    from .run import load_run, write_evaluation

    run = load_run(run_dir, device)
    n = min(subset or run.meta["n_test"], run.meta["n_test"])
    with tqdm(total=n, desc="evaluate", unit="item", disable=as_json or not sys.stderr.isatty(), leave=False) as bar:
        result = run.evaluate(samples=samples, subset=subset, progress=bar.update)
    write_evaluation(run, result)
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
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
def sample(run_dir, num, output, seed, device):
    """Draw z from the prior and save the decoder means as a PNG grid."""
    from .run import load_run

    if not output.lower().endswith(".png"):
        raise UserError(f"-o must name a .png file, got {output}")
    run = load_run(run_dir, device)
    run.save_samples(output, n=num, seed=seed)
    click.echo(f"wrote {num} samples to {output}")


@cli.command()
@click.option("--likelihood", "likelihoods", multiple=True, type=_choice(LIKELIHOODS),
              help="A family to compare; repeat the option for several [default: every family that fits the data].")
@fit_options
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
    """Train each likelihood family with the same data, networks, optimizer, budget and seeds, and compare
    test ELBO, log p(x), bits/dim and active units (families scored on different data are grouped apart)."""
    import contextlib

    from tqdm.auto import tqdm

    from .comparison import compare as run_comparison

    show = not quiet and sys.stderr.isatty()

    def bar(total, desc):
        return tqdm(total=total, desc=desc, unit="item", leave=False) if show else contextlib.nullcontext(_NoBar())

    result = run_comparison(
        make_config(None, **settings_from(kwargs)), out, likelihoods=list(likelihoods) or None, seeds=seeds,
        eval_samples=eval_samples, eval_subset=eval_subset, overwrite=overwrite,
        progress=None if quiet else (lambda line: click.echo(line, err=True)), eval_progress=bar,
    )  # fmt: skip
    if not quiet:
        click.echo(result.markdown())
        click.echo(f"wrote {Path(out) / 'comparison.md'}, .csv, .json and .png")


class _NoBar:
    def update(self, n):
        pass


def main(argv=None):
    """Entry point of the ``pyro-vae`` console script and of ``python cli.py``."""
    try:
        cli.main(args=argv, prog_name="pyro-vae", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
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
    except KeyboardInterrupt:
        click.echo("interrupted; the last completed epoch's checkpoint is kept (resume with --resume)", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
