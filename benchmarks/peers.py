r"""Loops (d) NumPyro and (e) pythae: the peers outside PyTorch+Pyro, from the optional extra ``bench``.

``pip install -e .[bench]`` installs numpyro, jax and pythae; they are never dependencies of pyro-vae.
When one is absent, building its loop raises :class:`Unavailable` with the reason, and the scripts skip
the loop and print that reason.

- :class:`NumPyroLoop` (d): the same math as (a)-(c): Gaussian encoder with
  :math:`\sigma = \mathrm{softplus}(\cdot) + 10^{-5}`, Bernoulli decoder on logits, data binarized
  afresh each time a batch is used, one-sample ``Trace_ELBO`` summed over the batch, Adam 1e-3. It is
  written as NumPyro's own ``examples/vae.py`` trains: ``stax`` nets through ``numpyro.module``, and
  the steps jitted as one ``jax.lax.fori_loop`` over ``svi.update``, the batch gathered from the
  device-resident training set and binarized inside the loop. Each number of steps per call (a timed
  block, a full epoch) is compiled once, ahead of time; the compile seconds are kept in ``compile_s``
  and reported apart from the step times. The nets start from PyTorch's default initialization
  distribution (uniform :math:`\pm 1/\sqrt{\text{fan-in}}` for weights and biases), not ``stax``'s.
- :class:`PythaeLoop` (e): pythae's ``VAE`` and ``BaseTrainer`` with the same layer sizes. pythae
  cannot binarize per batch (its trainer iterates a fixed ``BaseDataset``), so the data is binarized
  once, statically, with a fixed seed; its VAE parameterizes the encoder's log-variance and uses the
  closed-form KL with the mean (not the sum) over the batch. ``run(k)`` runs the body of
  ``BaseTrainer.train_step`` (the trainer's own ``_set_inputs_to_device``, model forward,
  ``_optimizers_step``, its ``loss.item()`` and NaN check) for ``k`` batches of its DataLoader;
  ``epoch()`` calls ``train_step`` itself.
"""

import math
import shutil
import time
import weakref

import torch

MIN_SCALE = 1e-5  # pyro_vae.vae.guides.DiagonalGuide.MIN_SCALE


class Unavailable(RuntimeError):
    """A peer loop cannot run here (its package is not installed, or has no backend for the device)."""


def _train_data(config, device):
    """The training and test items as a pyro-vae run prepares them, as ``(N, 784)`` vectors."""
    from pyro_vae.train.build import load_prepared

    _, _, train, test = load_prepared(config.replace(likelihood="bernoulli"), device)
    train = train.tensor() if hasattr(train, "tensor") else train  # a Trainer's TrainingData
    return train.reshape(len(train), -1), test.reshape(len(test), -1)


# (d) ------------------------------------------------------------------------------------------
class NumPyroLoop:
    """(d) NumPyro, jitted: ``fori_loop`` over ``svi.update``, batches gathered and binarized on the device."""

    name = "d"
    label = "NumPyro (jit, fori_loop)"

    def __init__(self, config, train=None, seed=0):
        try:
            import jax
            import numpyro  # noqa: F401
            from jax.example_libraries import stax  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"numpyro/jax not installed ({e.name}); pip install -e .[bench]") from None
        import jax.numpy as jnp
        import numpyro.distributions as ndist
        import numpyro.optim
        from numpyro.infer import SVI, Trace_ELBO

        self.jax, self.jnp = jax, jnp
        platform = "gpu" if str(config.device).startswith("cuda") else "cpu"
        try:
            self.jax_device = jax.devices(platform)[0]
        except RuntimeError:
            raise Unavailable(f"jax has no {platform} backend here (install jax[cuda] for the GPU)") from None
        if train is None:
            train, _ = _train_data(config, "cpu")
        self.n, self.x_dim = train.shape
        self.batch_size = config.batch_size
        self.compile_s = 0.0
        with jax.default_device(self.jax_device):
            self.train = jax.device_put(jnp.asarray(train.cpu().numpy()), self.jax_device)
            encoder, decoder = _stax_nets(self.x_dim, config.z_dim, config.hidden, config.activation)
            z_dim, b = config.z_dim, config.batch_size

            def model(x):
                dec = numpyro.module("decoder", decoder, (b, z_dim))
                with numpyro.plate("data", x.shape[0]):
                    z = numpyro.sample("z", ndist.Normal(0.0, 1.0).expand([z_dim]).to_event(1))
                    numpyro.sample("x", ndist.Bernoulli(logits=dec(z)).to_event(1), obs=x)

            def guide(x):
                enc = numpyro.module("encoder", encoder, (b, self.x_dim))
                with numpyro.plate("data", x.shape[0]):
                    loc, scale = enc(x)
                    numpyro.sample("z", ndist.Normal(loc, scale).to_event(1))

            self.model, self.guide = model, guide
            self.svi = SVI(model, guide, numpyro.optim.Adam(config.lr), Trace_ELBO())
            self.key = jax.random.PRNGKey(seed)
            self.key, init_key = jax.random.split(self.key)
            self.state = self.svi.init(init_key, self.train[:b])

        def steps(state, train, order, start, k, batch_size):
            def body(i, carry):
                state, total = carry
                idx = jax.lax.dynamic_slice(order, (start + i * batch_size,), (batch_size,))
                state, key = _split_state(state)
                x = jax.random.bernoulli(key, train[idx]).astype(jnp.float32)  # dynamic binarization
                state, loss = self.svi.update(state, x)
                return state, total + loss

            return jax.lax.fori_loop(0, k, body, (state, jnp.zeros((), jnp.float32)))

        def _split_state(state):
            rng, key = jax.random.split(state.rng_key)
            return state._replace(rng_key=rng), key

        self._steps = jax.jit(steps, static_argnums=(4, 5))
        self._compiled = {}
        self.order, self.position, self.last = None, 0, None

    def _fn(self, k, batch_size):
        """The compiled ``k``-step function for this batch size (compiled once, ahead of time, and timed)."""
        if (k, batch_size) not in self._compiled:
            t0 = time.perf_counter()
            order = self.jax.ShapeDtypeStruct((self.n,), self.jnp.int32)  # a shape only: no key is used up
            lowered = self._steps.lower(self.state, self.train, order, 0, k, batch_size)
            self._compiled[(k, batch_size)] = lowered.compile()
            self.compile_s += time.perf_counter() - t0
        return self._compiled[(k, batch_size)]

    def _new_order(self):
        self.key, key = self.jax.random.split(self.key)
        return self.jax.random.permutation(key, self.n)

    def run(self, k):
        """``k`` steps in one jitted call (a fresh order when the current one has fewer than ``k`` batches left)."""
        if self.order is None or self.position + k * self.batch_size > self.n:
            self.order, self.position = self._new_order(), 0
        fn = self._fn(k, self.batch_size)
        self.state, self.last = fn(self.state, self.train, self.order, self.position)
        self.position += k * self.batch_size

    def epoch(self):
        """One pass in a fresh order: the full batches in one jitted call, the partial last batch in
        another (every image is seen, as in (a)); returns the train ELBO per item (one host read)."""
        order = self._new_order()
        full, rest = divmod(self.n, self.batch_size)
        self.state, total = self._fn(full, self.batch_size)(self.state, self.train, order, 0)
        if rest:
            self.state, tail = self._fn(1, rest)(self.state, self.train, order, full * self.batch_size)
            total = total + tail
        self.order = None
        return -float(total) / self.n

    def test_elbo(self, test, chunk=10_000):
        """Mean one-sample ELBO (nats per item) of the rows of ``test`` (already binarized), jitted."""
        from numpyro.infer import Trace_ELBO

        jax = self.jax
        if not hasattr(self, "_test_loss"):
            self._test_loss = jax.jit(lambda key, params, x: Trace_ELBO().loss(key, params, self.model, self.guide, x))
        params = self.svi.get_params(self.state)
        x = jax.device_put(self.jnp.asarray(test.reshape(len(test), -1).cpu().numpy()), self.jax_device)
        total, key = 0.0, jax.random.PRNGKey(1)
        for i in range(0, len(x), chunk):
            key, k = jax.random.split(key)
            total += float(self._test_loss(k, params, x[i : i + chunk]))
        return -total / len(x)

    def sync(self):
        self.jax.block_until_ready(self.state)


def _stax_nets(x_dim, z_dim, hidden, activation):
    import jax
    from jax.example_libraries import stax

    act = {"relu": stax.Relu, "tanh": stax.Tanh}[activation]

    def mlp(sizes):
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [_Dense(a, b), act]
        return layers[:-1]

    encoder = stax.serial(
        *mlp((x_dim,) + tuple(hidden) + (2 * z_dim,)),
        stax.elementwise(lambda h: (h[..., :z_dim], jax.nn.softplus(h[..., z_dim:]) + MIN_SCALE)),
    )
    decoder = stax.serial(*mlp((z_dim,) + tuple(hidden) + (x_dim,)))
    return encoder, decoder


def _Dense(fan_in, out):
    """``stax.Dense`` with PyTorch's default initialization (weights and bias U(+-1/sqrt(fan_in)))."""
    import jax
    import jax.numpy as jnp

    bound = 1.0 / math.sqrt(fan_in)

    def init_fun(rng, input_shape):
        k1, k2 = jax.random.split(rng)
        w = jax.random.uniform(k1, (input_shape[-1], out), jnp.float32, -bound, bound)
        b = jax.random.uniform(k2, (out,), jnp.float32, -bound, bound)
        return input_shape[:-1] + (out,), (w, b)

    def apply_fun(params, inputs, **kwargs):
        w, b = params
        return jnp.dot(inputs, w) + b

    return init_fun, apply_fun


# (e) ------------------------------------------------------------------------------------------
class PythaeLoop:
    """(e) pythae's VAE and BaseTrainer, on statically binarized data (pythae cannot binarize per batch)."""

    name = "e"
    label = "pythae VAE + trainer (static binarization)"

    def __init__(self, config, train=None, seed=0, output_dir=None):
        try:
            from pythae.data.datasets import BaseDataset
            from pythae.models import VAE, VAEConfig
            from pythae.models.base.base_utils import ModelOutput
            from pythae.models.nn import BaseDecoder, BaseEncoder
            from pythae.trainers import BaseTrainer, BaseTrainerConfig
        except ImportError as e:
            raise Unavailable(f"pythae not installed ({e.name}); pip install -e .[bench]") from None
        import logging
        import tempfile

        for name in list(logging.root.manager.loggerDict):  # pythae's modules log at INFO, each with a handler
            if name.startswith("pythae"):
                logging.getLogger(name).setLevel(logging.WARNING)
        from loops import mlp

        from pyro_vae.train.build import resolve_device

        self.device = resolve_device(config.device)
        if train is None:
            train, _ = _train_data(config, "cpu")
        generator = torch.Generator().manual_seed(seed + 12345)
        static = torch.bernoulli(train.cpu(), generator=generator)  # binarized once: pythae's dataset is fixed
        x_dim, z_dim = static.shape[1], config.z_dim

        class Encoder(BaseEncoder):
            def __init__(self):
                super().__init__()
                self.net = mlp((x_dim,) + tuple(config.hidden) + (2 * z_dim,), config.activation)

            def forward(self, x):
                mu, log_var = self.net(x.reshape(x.shape[0], -1)).chunk(2, dim=-1)
                return ModelOutput(embedding=mu, log_covariance=log_var)

        class Decoder(BaseDecoder):
            def __init__(self):
                super().__init__()
                self.net = mlp((z_dim,) + tuple(config.hidden) + (x_dim,), config.activation)

            def forward(self, z):
                return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

        torch.manual_seed(seed)
        model_config = VAEConfig(input_dim=(x_dim,), latent_dim=z_dim, reconstruction_loss="bce")
        model = VAE(model_config, encoder=Encoder(), decoder=Decoder())
        scratch = tempfile.mkdtemp(prefix="pythae-bench-")  # pythae's trainer insists on an output folder
        weakref.finalize(self, shutil.rmtree, scratch, ignore_errors=True)  # removed with the loop
        training_config = BaseTrainerConfig(
            output_dir=output_dir or scratch,
            learning_rate=config.lr,
            per_device_train_batch_size=config.batch_size,
            num_epochs=1,
            no_cuda=self.device.type != "cuda",
            seed=seed,
        )
        self.trainer = BaseTrainer(model, BaseDataset(static, torch.zeros(len(static))), None, training_config)
        self.trainer.prepare_training()  # pythae's own: seeds, optimizer (torch Adam), scheduler
        self.batches, self.epochs, self.last = None, 0, None

    def run(self, k):
        """``k`` batches through the body of ``BaseTrainer.train_step`` (without its callbacks)."""
        tr = self.trainer
        tr.model.train()
        for _ in range(k):
            try:
                inputs = next(self.batches)
            except (StopIteration, TypeError):
                self.batches = iter(tr.train_loader)
                inputs = next(self.batches)
            inputs = tr._set_inputs_to_device(inputs)
            with tr.amp_context:
                out = tr.model(inputs, epoch=self.epochs + 1, dataset_size=len(tr.train_loader.dataset),
                               uses_ddp=tr.distributed)  # fmt: skip
            tr._optimizers_step(out)
            loss = out.loss.item()
            if loss != loss:
                raise ArithmeticError("NaN detected in train loss")
            self.last = loss

    def epoch(self):
        """``BaseTrainer.train_step``: one pass; returns pythae's mean loss per item (negated: an ELBO)."""
        self.epochs += 1
        return -self.trainer.train_step(self.epochs)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def available():
    """Which peer loops can run here: ``{name: None or the reason it cannot}``."""
    reasons = {}
    for name, modules in (("d", ("numpyro", "jax")), ("e", ("pythae",))):
        missing = [m for m in modules if not _importable(m)]
        reasons[name] = f"{', '.join(missing)} not installed; pip install -e .[bench]" if missing else None
    return reasons


def _importable(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


__all__ = ["NumPyroLoop", "PythaeLoop", "Unavailable", "available"]
