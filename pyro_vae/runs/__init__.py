"""Run folders: fitting into one (:func:`~pyro_vae.runs.fit.fit`), launching N data-parallel processes, opening one
again (:func:`~pyro_vae.runs.run.load_run`), the latent-space tools and the pictures."""
