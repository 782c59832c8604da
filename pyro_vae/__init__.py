"""pyro-vae: Auto-Encoding Variational Bayes (Kingma & Welling 2013) written as a Pyro library.

The model :math:`p(z)\\,p_\\theta(x \\mid z)` and the guide :math:`q_\\phi(z \\mid x)` are Pyro
functions (:class:`VAE`); :func:`fit` trains them with SVI and writes a run folder that
:func:`load_run` reads back. Each axis a user varies is a registry: :data:`LIKELIHOODS`,
:data:`GUIDES`, :data:`PRIORS`, :data:`OBJECTIVES`, :data:`ARCHITECTURES`, :data:`DATASETS`, :data:`OPTIMIZERS`.
"""

__version__ = "0.1.0"

from .analysis.compare import Comparison, compare  # noqa: E402
from .config import Config  # noqa: E402
from .data.dataset import Dataset
from .data.load import load_dataset  # noqa: E402
from .data.sources import DATASETS, DatasetSource
from .errors import TrainingDiverged, UserError  # noqa: E402
from .moved import install as _install_moved_paths  # noqa: E402
from .runs.fit import fit  # noqa: E402
from .runs.run import Run, load_run  # noqa: E402
from .speed import Speed  # noqa: E402
from .train.build import OPTIMIZERS, build_vae  # noqa: E402
from .train.labelled import LabelledTrainer  # noqa: E402
from .train.trainer import Trainer  # noqa: E402
from .vae.evaluation import evaluate, log_weights  # noqa: E402
from .vae.guides import GUIDES, DiagonalGuide, FullRankGuide, Guide, IAFGuide, PlanarGuide  # noqa: E402
from .vae.labels import ConditionalVAE, SemiSupervisedVAE  # noqa: E402
from .vae.likelihoods import LIKELIHOODS, Density, Likelihood, build_likelihood  # noqa: E402
from .vae.model import VAE  # noqa: E402
from .vae.nets import ARCHITECTURES  # noqa: E402
from .vae.objectives import OBJECTIVES, Objective  # noqa: E402
from .vae.priors import PRIORS, FlowPrior, MixturePrior, Prior, StandardPrior, VampPrior  # noqa: E402

_install_moved_paths()  # the module paths of the flat layout stay importable (pyro_vae.moved)

__all__ = [
    "ARCHITECTURES", "Comparison", "ConditionalVAE", "Config", "DATASETS", "Dataset", "DatasetSource", "Density", "DiagonalGuide", "FullRankGuide", "GUIDES",
    "FlowPrior", "Guide", "IAFGuide", "LIKELIHOODS", "LabelledTrainer", "Likelihood", "MixturePrior", "OBJECTIVES", "OPTIMIZERS", "Objective",
    "PRIORS", "PlanarGuide", "Prior", "Run", "SemiSupervisedVAE", "StandardPrior", "VampPrior",
    "Speed", "Trainer", "TrainingDiverged", "UserError", "VAE", "build_likelihood", "build_vae", "compare",
    "evaluate", "fit", "load_dataset", "load_run", "log_weights",
]  # fmt: skip
