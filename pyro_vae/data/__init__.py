"""Datasets: the :class:`~pyro_vae.data.dataset.Dataset` type and its splits, the built-in sources, a user's own
files and image folders, and the CIFAR-10 / SVHN / CelebA readers. Everything returns items in the data's own
shape ``(N, *item_shape)`` with the rules of the README's "Data" section; nothing here knows about models."""
