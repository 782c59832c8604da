"""Experiments over runs: :func:`~pyro_vae.analysis.compare.compare` and its report, paired differences."""
