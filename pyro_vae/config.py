"""Every setting of a run, saved as ``config.json`` and used to rebuild the run later."""

import dataclasses
from dataclasses import dataclass, field

from .nets import parse_hidden


@dataclass
class Config:
    """The settings of one ``fit``. Defaults are those of ``pyro-vae fit`` (see the README).

    The architecture defaults (784-400-20, ReLU, Adam 1e-3, batch 128) are those of
    pytorch/examples' VAE; the paper's own (500 tanh units, Adagrad 0.01, batch 100) are a flag away.
    """

    dataset: str = "mnist"
    data_dir: str = None
    data: str = None
    test_data: str = None
    likelihood: str = "bernoulli"
    binarize: str = "dynamic"
    min_scale: float = 0.01
    sigma: float = 0.1
    guide: str = "diagonal"
    flow_steps: int = None
    objective: str = "elbo"
    particles: int = 1
    z_dim: int = 20
    hidden: tuple = field(default=(400,))
    activation: str = "relu"
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 10
    seed: int = 0
    device: str = "auto"

    #: settings that may differ when a run is resumed (they do not change what is computed)
    RESUMABLE = ("epochs", "device", "data_dir")

    def __post_init__(self):
        self.hidden = parse_hidden(self.hidden)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def differences(self, other, ignore=RESUMABLE):
        """Names of the settings in which ``other`` differs from this config."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in ignore and a[k] != b[k]]
