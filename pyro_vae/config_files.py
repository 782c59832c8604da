"""Settings from a file (``pyro-vae fit --config FILE``): JSON, YAML or TOML, e.g. another run's ``config.json``.

:func:`read_config_file` returns the settings the file gives, checked against the fields of
:class:`~pyro_vae.config.Config` (names and types); flags given on the command line override them
(that merge is the CLI's). A file is one flat mapping of setting names to values, the names as in
``config.json`` (``z_dim``, ``hidden``, ``lr``, ...)::

    # fit.toml                      # fit.yaml                     // fit.json
    likelihood = "gaussian"         likelihood: gaussian           {"likelihood": "gaussian",
    hidden = [200, 200]             hidden: [200, 200]              "hidden": [200, 200]}

A directory is read as the run folder it is: its ``config.json``. The keys a run's ``config.json``
adds beside the settings (:data:`RUN_METADATA`: ``x_dim``, ``versions``, ...) are set aside, not
settings. An unknown key is refused, with the closest setting name when there is one
(:func:`difflib.get_close_matches`: ``z_dims`` -> ``z_dim``); only in a run's ``config.json`` (a file
with ``versions``), where it may be a setting of another pyro-vae version, is an unknown key that
resembles no setting set aside too. Every error is one line, a :class:`~pyro_vae.errors.UserError`
naming the file and, where known, the line.

Numbers may be written as text (:data:`NUMBER`): ``lr: 1e-3``, which PyYAML reads as a string (YAML
1.1 wants ``1.0e-3``), and ``"lr": "1e-3"`` in JSON or TOML are the number 0.001, in every numeric
setting, in layer sizes and in the option mappings (``likelihood_options: {min_scale: 1e-3}``); text
that is no number (``lr: fast``, ``lr: inf``) is refused in one line naming the setting.

YAML needs PyYAML (the extra ``yaml``: ``pip install -e '.[yaml]'`` in a checkout); TOML uses :mod:`tomllib` (Python >= 3.11) or,
before, the ``tomli`` package.
"""

import dataclasses
import difflib
import json
import re
from pathlib import Path

from .errors import UserError

#: what a run's ``config.json`` holds beside the settings (written by ``fit``)
RUN_METADATA = ("x_dim", "item_shape", "image_shape", "levels", "n_train", "n_test", "n_valid", "guide_options",
                "data_fingerprint", "versions")

FORMATS = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}

#: Bounds on what a config file may hold (a file of settings is a few hundred bytes): its size in
#: bytes, the depth of nested lists and mappings, and the number of values once YAML aliases are
#: expanded (a "billion laughs" file of a few lines names 10^9 values). Beyond them: one error line.
MAX_BYTES = 1_000_000
MAX_DEPTH = 16
MAX_VALUES = 10_000


def _check_bounds(path, data):
    """Walk ``data`` as its users would (aliases expanded) and refuse more than :data:`MAX_DEPTH` levels or
    :data:`MAX_VALUES` values, before anything prints or converts it."""
    count = 0
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise UserError(f"{path}: more than {MAX_VALUES} values (YAML aliases expanded); a config file is a "
                            "short mapping of settings")  # fmt: skip
        if isinstance(value, (dict, list, tuple)):
            if depth > MAX_DEPTH:
                raise UserError(f"{path}: lists or mappings nested more than {MAX_DEPTH} deep; a config file is a "
                                "short mapping of settings")  # fmt: skip
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))


def _line_of(text, key, fmt):
    """The 1-based line where ``key`` is set in ``text``, or None (a best-effort search)."""
    patterns = {
        "JSON": rf'"{re.escape(key)}"\s*:',
        "YAML": rf"^\s*['\"]?{re.escape(key)}['\"]?\s*:",
        "TOML": rf"^\s*['\"]?{re.escape(key)}['\"]?\s*=",
    }
    for i, line in enumerate(text.splitlines(), start=1):
        if re.search(patterns[fmt], line):
            return i
    return None


def _where(path, line):
    return f"{path}, line {line}" if line else str(path)


def _parse(path, text, fmt):
    try:
        return _parse_text(path, text, fmt)
    except RecursionError:  # [[[[... nested deeper than the parser's recursion allows
        raise UserError(f"{path}: lists or mappings nested too deep; a config file is a short mapping of settings") from None


def _parse_text(path, text, fmt):
    if fmt == "JSON":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{_where(path, e.lineno)}: not valid JSON ({e.msg}, column {e.colno})") from None
    if fmt == "YAML":
        try:
            import yaml
        except ImportError:
            raise UserError(
                f"{path} is YAML, which needs PyYAML: pip install -e '.[yaml]' in a checkout of pyro-vae "
                "(or pip install PyYAML; or use JSON or TOML)"
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise UserError(f"{_where(path, mark.line + 1 if mark else None)}: not valid YAML ({problem})") from None
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            raise UserError(f"{path} is TOML, which needs Python >= 3.11 or the tomli package: pip install tomli") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = getattr(e, "lineno", None)
        if line is None:
            m = re.search(r"line (\d+)", str(e))
            line = int(m.group(1)) if m else None
        message = getattr(e, "msg", None) or re.sub(r"\s*\(at line.*\)$", "", str(e))
        raise UserError(f"{_where(path, line)}: not valid TOML ({message})") from None


def _kind(value):
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip


#: A number written as text: decimal digits with an optional sign, fraction and exponent (``10``, ``-2.5``,
#: ``.5``, ``1e-3``, ``1.5E+4``), the number syntax of JSON, TOML and YAML 1.2. PyYAML follows YAML 1.1,
#: whose floats need a dot and a signed exponent, so it reads ``lr: 1e-3`` or ``lr: 1e3`` as the *string*
#: ``"1e-3"``; JSON and TOML files may quote numbers (``"lr": "1e-3"``) as well.
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def as_number(value):
    """``value`` as a number when it is text that :data:`NUMBER` matches (surrounding blanks allowed):
    an ``int`` for whole-number digits (``"10"``), else a ``float`` (``"1e-3"`` -> ``0.001``); any
    other value is returned unchanged (``"fast"``, ``"inf"``, ``"0x10"``, ``True``, ``2``)."""
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    return value


def numbers_in(value):
    """``value`` with :func:`as_number` applied to every string in it, through nested mappings and lists:
    the options of ``likelihood_options`` / ``guide_options``, whose types are their part's to check."""
    if isinstance(value, dict):
        return {k: numbers_in(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers_in(v) for v in value]
    return as_number(value)


def _check_value(name, value, field):
    """``value`` for ``field`` in the type its annotation names, or a message saying why not.

    Numeric fields (``int``, ``float``, layer sizes) and option mappings read number-like text as the
    number (:func:`as_number`), the same in JSON, TOML and YAML; other text in a numeric field is refused.
    """
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    kind = kind.removesuffix(" | None")  # an optional setting (``lr_step: int | None``) holds its type or null
    if value is None:
        return (value, None) if field.default is None else (None, f"{name} cannot be null")
    given, value = value, as_number(value) if kind in ("int", "float") else value
    if kind == "bool":
        return (value, None) if isinstance(value, bool) else (None, f"{name} must be true or false, got {value!r} ({_kind(value)})")
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (value, None) if ok else (None, f"{name} must be an integer, got {given!r} ({_kind(given)})")
    if kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (float(value), None) if ok else (None, f"{name} must be a number, got {given!r} ({_kind(given)})")
    if kind == "str":
        return (value, None) if isinstance(value, str) else (None, f"{name} must be a string, got {value!r} ({_kind(value)})")
    if kind == "tuple":  # layer sizes: [200, 200], 400 or "200,200"
        def whole(v):
            v = as_number(v)
            return int(v) if isinstance(v, float) and v.is_integer() else v

        value = [whole(v) for v in value] if isinstance(value, list) else whole(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return [value], None
        if isinstance(value, str):
            return value, None
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return value, None
        return None, f"{name} must be a list of integers (e.g. [200, 200]), got {given!r}"
    if kind == "dict" and isinstance(value, dict):
        return numbers_in(value), None
    return value, None


def config_fields():
    """The settings a file may give: :class:`~pyro_vae.config.Config`'s fields by name."""
    from .config import Config

    return {f.name: f for f in dataclasses.fields(Config)}


def read_config_file(path, fields=None, with_ignored=False):
    """The settings in the JSON, YAML or TOML file ``path`` (or a run folder's ``config.json``).

    :param path: the file, or a run folder.
    :param dict fields: name -> :class:`dataclasses.Field` of the settings allowed (default
        :func:`config_fields`); values are checked against their annotation (``int``, ``float``,
        ``str``, ``bool``, ``tuple`` for layer sizes) and null only where the default is ``None``.
    :param bool with_ignored: also return the keys set aside (run metadata; in a run's
        ``config.json``, settings unknown to this version), as ``(settings, ignored)``.
    :returns: a dict of settings (``hidden`` as a list, or as given), or ``(settings, ignored)``.
    :raises UserError: a missing, unreadable or malformed file, an unknown key, a wrong type.
    """
    fields = config_fields() if fields is None else fields
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is a folder without a config.json; --config needs a JSON, YAML or TOML file")
        path = path / "config.json"
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown config file type {path.suffix or '(no suffix)'!r}; use .json, .yaml, .yml or .toml")
    if not path.exists():
        raise UserError(f"config file {path} does not exist")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES or not path.is_file():
            what = f"{size} bytes, more than {MAX_BYTES}" if path.is_file() else "not a regular file"
            raise UserError(f"config file {path} is {what}; a config file is a short mapping of settings")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text file (not UTF-8 at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror or e}") from None
    data = _parse(path, text, fmt)
    _check_bounds(path, data)
    if data is None and fmt == "YAML":
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of setting names to values, got {_kind(data)}")

    is_run_config = "versions" in data
    settings, ignored = {}, {}
    for key, value in data.items():
        key = str(key)
        line = _line_of(text, key, fmt)
        if key in fields:
            value, problem = _check_value(key, value, fields[key])
            if problem:
                raise UserError(f"{_where(path, line)}: {problem}")
            settings[key] = value
            continue
        close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.75)
        if key in RUN_METADATA or (is_run_config and not close):
            ignored[key] = value
            continue
        hint = f"; did you mean {close[0]!r}?" if close else f"; the settings are: {', '.join(fields)}"
        raise UserError(f"{_where(path, line)}: unknown setting {key!r}{hint}")
    return (settings, ignored) if with_ignored else settings
