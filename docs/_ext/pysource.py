"""Two directives that keep the documentation in step with the code, by reading it at build time.

``.. pysource:: dotted.name`` shows the source of any importable Python object (a function, class
or method of pyro_vae, Pyro or PyTorch), with the file's own line numbers and a caption naming the
file and package version. It is ``literalinclude`` with ``:pyobject:`` where the file is found by
import, so every ``literalinclude`` option works (``:start-at:``, ``:end-at:``, ``:emphasize-lines:``...).
Several names may be given, separated by spaces: the first that exists is shown (for code that may
move, e.g. from a function into a class). If none exists, or a ``:start-at:`` text is no longer in
it, the build fails: the page must then be brought up to date with the code.

``.. registry:: pyro_vae.LIKELIHOODS`` is a table of the names registered in a
:class:`pyro_vae.registry.Registry`, each with its class and the first line of its docstring.
"""

import importlib
import inspect
import os

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.directives.code import LiteralInclude
from sphinx.util.docutils import SphinxDirective


def resolve(dotted):
    """``"pkg.module.Class.method"`` -> ``(module, "Class.method", object)``."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        obj = module
        for name in parts[i:]:
            obj = getattr(obj, name)  # AttributeError: the object is gone; the page needs updating
        return module, ".".join(parts[i:]), obj
    raise ImportError(f"cannot import any module of {dotted!r}")


def distribution_of(module):
    """``"pyro-ppl 1.9.2"`` for a module of an installed distribution, else ``None``."""
    from importlib.metadata import packages_distributions, version

    top = module.__name__.split(".")[0]
    for dist in packages_distributions().get(top, []):
        return f"{dist} {version(dist)}"
    return None


def public_name(obj):
    """``module.Qualname``; for an object made by a factory (e.g. ``pyro.optim.Adam``, whose qualified
    name is a lambda's), the first enclosing package that binds it to a name."""
    qualname = getattr(obj, "__qualname__", type(obj).__qualname__)
    module = getattr(obj, "__module__", type(obj).__module__)
    if "<" not in qualname:
        return f"{module}.{qualname}"
    parts = module.split(".")
    for i in range(len(parts) - 1, 0, -1):
        package = importlib.import_module(".".join(parts[:i]))
        for name, value in vars(package).items():
            if value is obj:
                return f"{package.__name__}.{name}"
    return f"{module}.{qualname}"


class PySource(LiteralInclude):
    """``literalinclude`` of the source of an importable object."""

    option_spec = {**LiteralInclude.option_spec, "no-caption": directives.flag}

    def run(self):
        errors = []
        for target in self.arguments[0].split():  # the first of the names that exists
            try:
                module, qualname, obj = resolve(target)
                break
            except (ImportError, AttributeError) as e:
                errors.append(f"{target}: {e}")
        else:
            message = f"pysource: cannot find {'; '.join(errors)}"
            return [self.state.document.reporter.warning(message, line=self.lineno)]
        path = inspect.getsourcefile(inspect.unwrap(obj) if qualname else module)
        docdir = os.path.dirname(self.env.doc2path(self.env.docname))
        self.arguments[0] = os.path.relpath(path, docdir)
        if qualname and "pyobject" not in self.options:
            self.options["pyobject"] = qualname
        self.options.setdefault("language", "python")
        self.options.setdefault("lineno-match", True)
        if "caption" not in self.options and "no-caption" not in self.options:
            top = module.__name__.split(".")[0]
            root = os.path.dirname(importlib.import_module(top).__file__)
            shown = os.path.relpath(path, os.path.dirname(root)).replace(os.sep, "/")
            where = distribution_of(module) if top != "pyro_vae" else None
            name = f"{module.__name__}.{qualname}" if qualname else module.__name__
            self.options["caption"] = f"``{name}`` in {shown}" + (f" ({where})" if where else "")
        return super().run()


class RegistryTable(SphinxDirective):
    """A table of a registry's entries: name, class, summary."""

    required_arguments = 1

    def run(self):
        _, _, registry = resolve(self.arguments[0])
        table = nodes.table(classes=["registry"])
        group = nodes.tgroup(cols=3)
        table += group
        for width in (20, 30, 50):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        body = nodes.tbody()
        group += head
        group += body
        head += self._row(["name", "class", "what it is"], header=True)
        for name in registry.names():
            entry = registry.get(name)
            doc = inspect.getdoc(entry) or ""
            summary = " ".join(doc.split("\n\n")[0].split())
            body += self._row([name, public_name(entry), summary])
        return [table]

    def _row(self, cells, header=False):
        row = nodes.row()
        for i, text in enumerate(cells):
            entry = nodes.entry()
            if header:
                entry += nodes.paragraph(text=text)
            elif i < 2:  # the name and the class
                entry += nodes.paragraph("", "", nodes.literal(text=text))
            else:  # the docstring's reST, parsed inline (the page must be .rst)
                paragraphs, _ = self.state.inline_text(text, self.lineno)
                entry += nodes.paragraph("", "", *paragraphs)
            row += entry
        return row


def setup(app):
    app.add_directive("pysource", PySource)
    app.add_directive("registry", RegistryTable)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
