"""From a :class:`~pyro_vae.config.Config` to a trained model in memory: building the parts, learning-rate
schedules, the training loop and its loggers. Nothing here writes a run folder (that is :mod:`pyro_vae.runs`)."""
