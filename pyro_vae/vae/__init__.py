"""The paper, with no I/O: the model p(z) p(x|z), the guides q(z|x), the likelihood families, the objectives,
KL weighting and the evaluation of a trained model. Start with :mod:`pyro_vae.vae.model`.

Kingma & Welling (2013), "Auto-Encoding Variational Bayes", arXiv:1312.6114.
"""
