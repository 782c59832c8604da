"""A tiny name -> class registry, one per axis a user varies.

Each axis of a VAE experiment (likelihood family p(x|z), guide q(z|x), objective, dataset,
optimizer) is a :class:`Registry`. Adding a choice is one class and one decorator::

    @LIKELIHOODS.register("my-family")
    class MyFamily(Likelihood):
        ...

after which ``pyro-vae fit --likelihood my-family`` works and the CLI lists it among the choices.

A name is taken once: registering another class under a name already in use raises
:class:`ValueError`, so a new entry never silently replaces a built-in one. The one exception is
the *same* class defined again, as when a Jupyter cell that defines and registers it is run a
second time: an entry with the same module and qualified name (``__module__``, ``__qualname__``)
replaces the old one, so the name then means the class as last defined.
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
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted.

        :raises ValueError: when ``name`` is taken by another class (one that is not ``obj`` defined
            again: same ``__module__`` and ``__qualname__``, as a re-run notebook cell defines it).
        """

        def decorator(obj):
            if name in self._entries and not _same_definition(self._entries[name], obj):
                old = self._entries[name]
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (to {_where(old)}); pick another name for {_where(obj)}"
                )
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


def _where(obj):
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _same_definition(old, new):
    """Whether ``new`` is ``old`` or the same definition run again (same module and qualified name)."""
    if old is new:
        return True
    names = ("__module__", "__qualname__")
    return all(hasattr(o, n) for o in (old, new) for n in names) and _where(old) == _where(new)
