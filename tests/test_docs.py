"""The tutorials show what the program does: their commands and code run, at smoke budgets, and what the
pages show (output lines, metrics keys, file lists) is compared with what the run printed and wrote.

A page's ``console`` blocks are read as a shell session: ``$ COMMAND`` lines (``\\`` continues one) and, under
each, the output the page shows. :func:`run_session` runs the commands one after the other in a scratch folder
(``pyro-vae`` in this process, stderr then stdout, ``echo $?`` as the status of the command before) after the page's smoke substitutions (the bundled ``digits`` instead of MNIST, fewer
importance samples). :func:`same_shape` then compares each shown output with the printed one word by word,
every number standing for any number: the words, their order and the number of lines must agree, so a renamed
column, a new line or a missing file fails, a different loss does not. A block preceded by the MyST comment
line ``% docs-test: skip`` is only shown (e.g. a 100-epoch command).

The end-to-end runs are marked ``examples`` (``make examples`` runs them, as CI does); the parsing checks run
with the rest of the suite.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from pyro_vae.cli import main

TUTORIALS = ROOT / "docs" / "tutorials"
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
SKIP = "% docs-test: skip"


def fenced_blocks(page, language):
    """``(skipped, text)`` of each fenced block of ``language`` in the Markdown file ``page``, in order."""
    lines = Path(page).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == f"```{language}":
            j = lines.index("```", i + 1)
            blocks.append((i > 0 and lines[i - 1].strip() == SKIP, "\n".join(lines[i + 1 : j])))
            i = j
        i += 1
    return blocks


def session(page):
    """``[(command, shown output)]`` of the page's console blocks that are not skipped."""
    steps = []
    for skipped, text in fenced_blocks(page, "console"):
        if skipped:
            continue
        for line in text.replace("\\\n", " ").splitlines():
            if line.startswith("$ "):
                steps.append([line[2:].strip(), []])
            elif steps:
                steps[-1][1].append(line)
    return [(command, "\n".join(output)) for command, output in steps]


def pattern(word):
    """A regex matching ``word`` with each number in it standing for any number."""
    parts = re.split(f"({NUMBER})", word)
    return "".join(NUMBER if k % 2 else re.escape(part) for k, part in enumerate(parts))


def same_shape(shown, printed):
    """``None`` when ``printed`` has the words of ``shown`` (numbers apart) in order, else what differs."""
    want, got = shown.split(), printed.split()
    for k, (w, g) in enumerate(zip(want, got)):
        if not re.fullmatch(pattern(w), g):
            return f"word {k}: the page shows {w!r}, the program printed {g!r}"
    if len(want) != len(got):
        return f"the page shows {len(want)} words, the program printed {len(got)}"
    return None


def run_session(steps, capsys, replace=()):
    """Run ``steps`` (after the ``(old, new)`` substitutions ``replace``) in the current folder; ``[(command,
    printed)]``. ``pyro-vae`` runs in this process (:func:`pyro_vae.cli.main`, sparing a fresh interpreter per
    command; what it writes to stderr comes first, as on a terminal: the epoch lines, then the summary),
    other commands in bash."""
    printed, status = [], 0
    for command, _ in steps:
        for old, new in replace:
            command = command.replace(old, new)
        command = command.split("  #")[0].strip()
        if command.startswith("export "):
            printed.append((command, ""))  # the data folder: the bundled digits need none
        elif command == "echo $?":
            printed.append((command, str(status)))
        elif command.startswith("pyro-vae "):
            capsys.readouterr()
            status = main(shlex.split(command)[1:])
            out, err = capsys.readouterr()
            printed.append((command, err + out))
        else:
            done = subprocess.run(["bash", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=60)  # fmt: skip
            status = done.returncode
            printed.append((command, done.stdout))
    return printed


def keys_listed(page, name):
    """The backquoted names after ``keys`` on the page's bullet line of file ``name``."""
    for line in Path(page).read_text().splitlines():
        if line.startswith(f"- `{name}`:"):
            return re.findall(r"`(\w+)`", line.split("keys", 1)[1])
    raise AssertionError(f"{page} has no bullet line for {name}")


def test_the_tutorial_pages_parse():
    cli = session(TUTORIALS / "first-fit-cli.md")
    commands = [command for command, _ in cli]
    assert commands[0].startswith("export PYRO_VAE_DATA")
    assert sum(c.startswith("pyro-vae fit") for c in commands) == 3  # the long paper command is skipped
    assert "ls runs/mnist" in commands and "echo $?" in commands
    assert keys_listed(TUTORIALS / "first-fit-cli.md", "metrics.jsonl")[:2] == ["epoch", "train_elbo"]
    assert len(fenced_blocks(TUTORIALS / "first-fit-python.md", "text")) == 1


def test_same_shape_compares_words_with_numbers_free():
    assert same_shape("epoch   1/5  valid ELBO  -130.507  (7559 items/s)", "epoch 1/5 valid ELBO -31.2 (9 items/s)") is None
    assert "test" in same_shape("test ELBO -1.0", "valid ELBO -1.0")
    assert "words" in same_shape("a.pt b.pt", "a.pt b.pt c.json")
    assert same_shape("lr 1e-3", "lr 0.001") is None


@pytest.mark.examples
def test_first_fit_cli_page_shows_what_the_program_prints(tmp_path, monkeypatch, capsys):
    page = TUTORIALS / "first-fit-cli.md"
    steps = session(page)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    printed = run_session(
        steps, capsys, replace=[("--dataset mnist", "--dataset digits"), ("--samples 1000", "--samples 20")]
    )
    for (command, shown), (ran, output) in zip(steps, printed):
        shown = shown.replace(" on mnist:", " on digits:")
        difference = same_shape(shown, output)
        assert difference is None, f"{page.name}: `{command}` (ran `{ran}`): {difference}\nprinted:\n{output}"
    run = tmp_path / "runs" / "mnist"
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert keys_listed(page, "metrics.jsonl") == list(record)
    assert keys_listed(page, "final.json") == list(json.loads((run / "final.json").read_text()))
    assert keys_listed(page, "evaluation.json") == list(json.loads((run / "evaluation.json").read_text()))


@pytest.mark.examples
def test_first_fit_python_page_shows_what_the_example_prints(tmp_path, monkeypatch):
    page = TUTORIALS / "first-fit-python.md"
    [(_, shown)] = fenced_blocks(page, "text")
    out = tmp_path / "first-fit-python"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "first_fit.py"), "--dataset", "digits", "--epochs", "5",
         "--samples", "20", "--subset", "50", "--out", str(out)],
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    difference = same_shape(shown.replace("runs/first-fit-python", str(out)), done.stdout)
    assert difference is None, f"{page.name}: {difference}\nprinted:\n{done.stdout}"

    # the page's code blocks run against that run folder
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    for skipped, code in fenced_blocks(page, "python"):
        if not skipped:
            exec(compile(code.replace('"runs/mnist"', repr(str(out))), page.name, "exec"), {"pyro_vae": __import__("pyro_vae")})


@pytest.mark.examples
def test_python_m_pyro_vae_is_the_command():
    done = subprocess.run([sys.executable, "-m", "pyro_vae", "evaluate", "no-such-run"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (2, "", "error: no-such-run is not a pyro-vae run folder "
                                                                  "(no config.json)\n")


NOTEBOOK = TUTORIALS / "notebook.ipynb"


def execute_notebook(path, folder, parameters=None):
    """The notebook at ``path`` executed in a fresh kernel (this checkout's ``pyro_vae``) in ``folder``, after
    replacing the source of its cell tagged ``parameters`` with ``parameters`` (when given)."""
    import nbclient
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    if parameters is not None:
        [cell] = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        cell.source = parameters
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits them
    try:
        client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                         resources={"metadata": {"path": str(folder)}})  # fmt: skip
        client.execute()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return notebook


@pytest.mark.examples
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jupyter_client's and zmq's own, in the kernel's start
def test_tutorial_notebook_runs_at_a_smoke_budget(tmp_path):
    pytest.importorskip("nbclient", reason="the notebooks extra: pip install -e '.[notebooks]'")
    notebook = execute_notebook(NOTEBOOK, tmp_path, 'epochs = 1\nsamples = 5\nout = "runs/notebook"')
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "Warning" not in stderr, stderr
    html = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(html) == 1 and "<b>Run</b>" in html[0] and html[0].count("data:image/png;base64,") == 3
    assert any("text/markdown" in o.get("data", {}) and "bernoulli" in o.data["text/markdown"] for o in outputs)
    assert (tmp_path / "runs" / "notebook" / "bernoulli" / "best.pt").exists()
    assert (tmp_path / "runs" / "notebook" / "latents.png").exists()


def test_the_rendered_notebook_shows_its_outputs():
    # the docs render the notebook as saved (nb_execution_mode = "off"): it must be saved executed, without errors
    import json as _json

    cells = [c for c in _json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(c["execution_count"] for c in cells) and all(c["outputs"] for c in cells[2:])
    assert not [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]


def test_the_api_reference_lists_every_public_name_and_module_once():
    import pyro_vae

    page = (ROOT / "docs" / "reference" / "api.rst").read_text()
    documented = re.findall(r"^\.\. auto(?:class|function|data):: pyro_vae\.(\w+)$", page, flags=re.M)
    assert sorted(documented) == sorted(pyro_vae.__all__)
    listed = ["pyro_vae." + name for name in re.findall(r"^   ([\w.]+)$", page, flags=re.M)]  # autosummary entries
    package = ROOT / "pyro_vae"
    modules = sorted(
        ".".join(("pyro_vae",) + p.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
        for p in package.rglob("*.py") if p != package / "__init__.py" and "__pycache__" not in p.parts
    )  # fmt: skip
    assert sorted(listed) == modules, "add a new module to its concept's section of docs/reference/api.rst"


def test_intersphinx_links_pyro_torch_numpy_and_builds_offline(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    assert {"pyro", "torch", "numpy"} <= set(conf.INVENTORIES)
    (tmp_path / "torch.inv").write_bytes(b"")  # a saved inventory is used as it is, without the network
    mapping = conf._intersphinx_mapping({"torch": conf.INVENTORIES["torch"]}, folder=str(tmp_path))
    assert mapping == {"torch": (conf.INVENTORIES["torch"], str(tmp_path / "torch.inv"))}
    assert conf._intersphinx_mapping({"none": "http://127.0.0.1:9/"}, folder=str(tmp_path)) == {}  # unreachable


@pytest.mark.examples
def test_custom_guide_page_shows_what_the_example_prints(tmp_path):
    page = TUTORIALS / "custom-guide.md"
    [block] = [text for _, text in fenced_blocks(page, "console") if "$ python examples/custom_guide.py" in text]
    shown = block.split("\n", 1)[1]  # the example's output, its own `$ pyro-vae ...` line included
    out = tmp_path / "custom-guide"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_guide.py"), "--smoke", "--out", str(out)],
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    printed = done.stdout.replace(str(ROOT / "examples"), "/.../examples").replace(str(out), "runs/custom-guide")
    difference = same_shape(shown, printed)
    assert difference is None, f"{page.name}: {difference}\nprinted:\n{printed}"


@pytest.mark.examples
def test_compare_likelihoods_page_shows_what_the_example_prints(tmp_path):
    page = TUTORIALS / "compare-likelihoods.md"
    [block] = [text for _, text in fenced_blocks(page, "console") if "$ python examples/compare_likelihoods.py" in text]
    command, shown = block.split("\n", 1)
    args = shlex.split(command)[3:]
    args[args.index("--epochs") + 1], args[args.index("--samples") + 1] = "1", "10"  # the smoke budget
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "compare_likelihoods.py"), *args, "--out", str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
    # the progress lines first (the page shows them in full), then comparison.md, whose tables the page shows
    progress = "\n".join(done.stdout.splitlines()[: len(shown.splitlines())])
    assert same_shape(shown, progress) is None, f"{page.name}: {same_shape(shown, progress)}\nprinted:\n{done.stdout}"
    tables = lambda text: [line for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    written = "\n".join(tables((tmp_path / "comparison.md").read_text()))
    difference = same_shape("\n".join(tables(page.read_text())), written)
    assert difference is None, f"{page.name}'s tables: {difference}\nwritten:\n{written}"
