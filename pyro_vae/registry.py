"""A tiny name -> class registry, one per axis a user varies.

Each axis of a VAE experiment (likelihood family p(x|z), guide q(z|x), objective, dataset,
optimizer) is a :class:`Registry`. Adding a choice is one class and one decorator::

    @LIKELIHOODS.register("my-family")
    class MyFamily(Likelihood):
        ...

after which ``pyro-vae fit --likelihood my-family`` works and the CLI lists it among the choices.
"""

from .errors import UserError


class Registry:
    """Maps names to classes (or factories) for one experimental axis.

    :param str kind: what the entries are ("likelihood", "dataset", ...), used in error messages.
    """

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, name, obj=None):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def decorator(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            obj.name = name
            self._entries[name] = obj
            return obj

        return decorator if obj is None else decorator(obj)

    def get(self, name):
        """The entry called ``name``; a :class:`UserError` listing the choices otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def names(self):
        return list(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)
