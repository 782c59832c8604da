"""Loggers: csv, TensorBoard and MLflow read back; the plain epoch line; missing extras."""

import builtins
import csv
import io
import json
from pathlib import Path

import pytest
import torch

from pyro_vae import UserError
from pyro_vae.train.loggers import (
    LOGGERS,
    CSVLogger,
    Logger,
    PlainProgress,
    build_loggers,
    format_epoch_line,
    image_grid,
)

CONFIG = {"likelihood": "bernoulli", "z_dim": 4, "hidden": [32, 16], "lr": 0.001, "data_dir": None,
          "versions": {"torch": "2.0", "pyro": "1.9"}}  # fmt: skip
RECORDS = [
    {"epoch": 1, "train_elbo": -120.5, "validation_elbo": -118.25, "seconds": 1.5},
    {"epoch": 2, "train_elbo": -110.125, "validation_elbo": -109.0, "seconds": 1.25},
]


def images(n=4, c=1, h=6, w=5, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# csv -------------------------------------------------------------------------------------------


def test_csv_rows_and_new_columns(tmp_path):
    lg = CSVLogger()
    lg.start(tmp_path, CONFIG)
    lg.log_epoch(RECORDS[0])
    lg.log_epoch({**RECORDS[1], "kl_weight": 0.5})  # a new column
    lg.log_epoch({"epoch": 3, "train_elbo": 1 / 3})
    lg.close()
    rows = read_csv(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["epoch", "train_elbo", "validation_elbo", "seconds", "kl_weight"]
    assert [float(r["train_elbo"]) for r in rows] == [-120.5, -110.125, 1 / 3]  # full precision
    assert rows[0]["kl_weight"] == "" and float(rows[1]["kl_weight"]) == 0.5 and rows[2]["seconds"] == ""


def test_csv_resume_replaces_later_epochs(tmp_path):
    lg = CSVLogger()
    lg.start(tmp_path, CONFIG)
    for r in RECORDS:
        lg.log_epoch(r)
    resumed = CSVLogger()
    resumed.start(tmp_path, CONFIG)
    resumed.log_epoch({**RECORDS[1], "train_elbo": -99.0})  # epoch 2 again, after a resume from epoch 1
    resumed.log_epoch({**RECORDS[1], "epoch": 3})
    rows = read_csv(tmp_path / "metrics.csv")
    assert [(int(r["epoch"]), float(r["train_elbo"])) for r in rows] == [(1, -120.5), (2, -99.0), (3, -110.125)]


# the group, images, plain line --------------------------------------------------------------------


def test_build_loggers_and_image_epochs(tmp_path):
    group = build_loggers(["csv", "csv"], image_every=3)
    assert len(group.loggers) == 1
    assert not group.wants_images(3)  # csv logs no images: none need to be made

    class Images(Logger):
        def log_images(self, epoch, name, images):
            pass

    group = build_loggers([], image_every=3)
    group.loggers.append(Images())
    assert [e for e in range(1, 8) if group.wants_images(e)] == [3, 6]
    assert group.wants_images(7, last=True)
    with pytest.raises(UserError, match="unknown logger 'wandb'; choose one of: csv, tensorboard, mlflow"):
        build_loggers(["wandb"])


def test_image_grid():
    grid = image_grid(images(n=5))  # 3 per row, 2 rows, padding 2
    assert grid.shape == (3, 2 * 6 + 3 * 2, 3 * 5 + 4 * 2)
    torch.testing.assert_close(grid[0, 2:8, 2:7], images(n=5)[0, 0])


def test_format_epoch_line():
    line = format_epoch_line({**RECORDS[0], "items_per_s": 8123.4, "kl_weight": 0.25, "active_units": 7}, epochs=10)
    # with a KL weight the train column is the weighted training objective, not the ELBO
    assert line == ("epoch   1/10  train objective  -120.500  validation ELBO  -118.250  KL weight 0.25    1.50 s  "
                    "    8123 items/s  active_units 7")  # fmt: skip


def test_plain_progress():
    out = io.StringIO()
    PlainProgress(out, epochs=2)(RECORDS[1])
    assert out.getvalue() == "epoch   2/2  train ELBO  -110.125  validation ELBO  -109.000    1.25 s\n"
    assert PlainProgress.wanted(False, io.StringIO())  # not a terminal
    assert not PlainProgress.wanted(True, io.StringIO())

    class TTY(io.StringIO):
        def isatty(self):
            return True

    assert not PlainProgress.wanted(False, TTY())


@pytest.mark.parametrize("name, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_missing_extra_names_it(monkeypatch, name, module):
    real_import = builtins.__import__

    def no_module(mod, *args, **kwargs):
        if mod == module or mod.startswith(module + "."):
            raise ImportError(f"No module named {mod!r}")
        return real_import(mod, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_module)
    monkeypatch.setattr("importlib.import_module", lambda mod: no_module(mod))
    with pytest.raises(UserError, match=rf"pip install -e '\.\[{name}\]' in a checkout of pyro-vae \(pip install 'pyro-vae\[{name}\]'"):
        build_loggers([name])


# TensorBoard ------------------------------------------------------------------------------------


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with build_loggers(["tensorboard"]) as group:
        group.start(tmp_path, CONFIG)
        for r in RECORDS:
            group.log_epoch(r)
        group.log_images(2, "samples", images())
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"train_elbo", "validation_elbo", "seconds"}
    assert [(e.step, e.value) for e in acc.Scalars("train_elbo")] == [(1, -120.5), (2, -110.125)]
    (img,) = acc.Images("samples")
    assert (img.step, img.height, img.width) == (2, 2 * 6 + 3 * 2, 2 * 5 + 3 * 2)
    import numpy as np
    from PIL import Image

    png = np.asarray(Image.open(io.BytesIO(img.encoded_image_string)))
    want = (image_grid(images()).permute(1, 2, 0).numpy() * 255)
    assert np.abs(png[..., :3].astype(float) - want).max() <= 1.0  # 8-bit rounding
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.strip("`\n")) == CONFIG
    # the HParams plugin's session summaries: the flattened config
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["z_dim"].number_value == 4
    assert start.hparams["versions.torch"].string_value == "2.0"
    assert start.hparams["hidden"].string_value == "[32, 16]"


# MLflow -----------------------------------------------------------------------------------------


def test_mlflow_store_read_back(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # restored (unset) after the test
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # the logger opts in to the file store itself
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    group = build_loggers(["mlflow"])
    group.start(run_dir, CONFIG)
    for r in RECORDS:
        group.log_epoch(r)
    group.log_images(2, "reconstructions", images())
    group.close()
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("pyro-vae").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run1"
    assert run.data.params["z_dim"] == "4" and run.data.params["versions.pyro"] == "1.9"
    assert run.data.params["hidden"] == "[32, 16]" and run.data.params["data_dir"] == "None"
    history = client.get_metric_history(run.info.run_id, "validation_elbo")
    assert sorted((m.step, m.value) for m in history) == [(1, -118.25), (2, -109.0)]
    path = client.download_artifacts(run.info.run_id, "reconstructions/epoch_0002.png", str(tmp_path))
    import numpy as np
    from PIL import Image

    png = np.asarray(Image.open(path))
    want = (image_grid(images()).permute(1, 2, 0).numpy() * 255).round()
    assert np.array_equal(png[..., :3].astype(float), want)


def test_mlflow_failed_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from mlflow.tracking import MlflowClient

    with pytest.raises(RuntimeError):
        with build_loggers(["mlflow"]) as group:
            group.start(tmp_path, CONFIG)
            raise RuntimeError("diverged")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("pyro-vae").experiment_id])
    assert run.info.status == "FAILED"


def test_registry_has_the_three():
    assert LOGGERS.names() == ["csv", "tensorboard", "mlflow"]


def test_progress_bars_in_terminals_and_jupyter_kernels(monkeypatch):
    import io
    import sys
    import types

    from pyro_vae.train.loggers import PlainProgress, interactive

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not interactive() and PlainProgress.wanted()  # a log file or a pipe: plain lines
    shell = types.SimpleNamespace(config={"IPKernelApp": {"connection_file": "kernel.json"}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert interactive() and not PlainProgress.wanted()  # a notebook: a tqdm.auto bar, no plain lines
    assert not interactive(io.StringIO())  # another stream of the kernel's process
    shell.config = {}  # IPython in a terminal (no kernel) whose stderr is not a terminal
    assert not interactive()
# Tracking a whole run: a shared MLflow store, resume into the same MLflow run, final metrics ----

FIT = dict(dataset="digits", hidden=(16,), z_dim=2, batch_size=256, device="cpu", quiet=True)


def test_mlflow_shared_sqlite_store_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    pytest.importorskip("sqlalchemy", reason="a SQLite MLflow store needs SQLAlchemy")
    pytest.importorskip("alembic", reason="a SQLite MLflow store needs Alembic")
    from mlflow.tracking import MlflowClient

    import pyro_vae

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts under ./mlruns
    out = tmp_path / "run"
    pyro_vae.fit(out=out, epochs=2, loggers=["mlflow"], **FIT)
    recorded = json.loads((out / "mlflow.json").read_text())
    assert recorded["tracking_uri"] == uri
    assert not (out / "mlruns").exists()  # no store of its own in the run folder
    pyro_vae.fit(out=out, epochs=3, resume=True, loggers=["mlflow"], **FIT)
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == recorded["run_id"]

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pyro-vae").experiment_id])
    assert run.info.run_id == recorded["run_id"] and run.info.status == "FINISHED"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    history = client.get_metric_history(run.info.run_id, "train_elbo")
    assert sorted((m.step, m.value) for m in history) == [(m["epoch"], m["train_elbo"]) for m in metrics]
    final = json.loads((out / "final.json").read_text())
    for key in ("test_elbo", "test_elbo_last", "best_valid_elbo", "best_epoch"):
        (value,) = [m.value for m in client.get_metric_history(run.info.run_id, key) if m.step == 3]
        assert value == pytest.approx(final[key], rel=1e-12)
    assert run.data.params["z_dim"] == "2" and run.data.params["lr"] == "0.001"
    assert run.data.params["epochs"] == "2" and run.data.tags["pyro_vae.epochs"] == "3"  # write-once params
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "run")}
    assert {"run/config.json", "run/final.json", "run/metrics.jsonl", "run/best.pt", "run/samples.png"} <= artifacts
    path = client.download_artifacts(run.info.run_id, "run/final.json", str(tmp_path))
    assert json.loads(Path(path).read_text()) == final


def test_mlflow_record_of_another_store_starts_a_new_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    from pyro_vae.train.loggers import MLflowLogger

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.json").write_text(json.dumps({"tracking_uri": "sqlite:///elsewhere.db", "run_id": "abc"}))
    logger = MLflowLogger()
    logger.start(tmp_path, CONFIG)
    logger.log_epoch(RECORDS[0])
    logger.close()
    record = json.loads((tmp_path / "mlflow.json").read_text())
    assert record["run_id"] != "abc" and record["tracking_uri"] == (tmp_path / "mlruns").resolve().as_uri()
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    assert client.get_run(record["run_id"]).data.metrics["train_elbo"] == -120.5


def test_mlflow_tracking_uri_argument_wins_over_the_environment(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from pyro_vae.train.loggers import MLflowLogger

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert MLflowLogger().resolved_uri(tmp_path) == "sqlite:///from-env.db"
    assert MLflowLogger(tracking_uri="sqlite:///given.db").resolved_uri(tmp_path) == "sqlite:///given.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert MLflowLogger().resolved_uri(tmp_path) == (tmp_path / "mlruns").resolve().as_uri()


def test_tensorboard_hparams_with_final_metrics(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    import pyro_vae

    out = tmp_path / "run"
    pyro_vae.fit(out=out, epochs=2, loggers=["tensorboard"], **FIT)
    final = json.loads((out / "final.json").read_text())
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    for key in ("test_elbo", "test_elbo_last", "best_valid_elbo"):
        (event,) = acc.Scalars(f"final/{key}")
        assert event.step == 2 and event.value == pytest.approx(final[key], rel=1e-6)  # float32 in the event file
    content = acc.SummaryMetadata("_hparams_/experiment").plugin_data.content
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    names = {m.name.tag for m in experiment.metric_infos}
    assert {"final/test_elbo", "final/test_elbo_last", "train_elbo", "valid_elbo"} <= names


def test_format_elbo_is_readable_when_diverged():
    from pyro_vae.train.loggers import format_elbo

    assert [format_elbo(v) for v in (float("-inf"), float("inf"), float("nan"), None)] == ["-inf", "inf", "nan", "n/a"]
    assert format_elbo(-104.2125) == "-104.213" and format_elbo(-3.4e38) == "-3.400e+38"
    line = format_epoch_line({"epoch": 2, "train_elbo": -3.4e38, "valid_elbo": float("nan")}, 5)
    assert "train ELBO -3.400e+38" in line and "valid ELBO       nan" in line and "e+38" in line
# Records as complete as metrics.jsonl, files never through links (issue 20) -----------------------

MORE = [
    {"epoch": 1, "train_elbo": -120.5, "valid_elbo": -118.25, "seconds": 1.5},
    {"epoch": 2, "train_elbo": -110.125, "valid_elbo": None, "seconds": 1.25},
    {"epoch": 3, "train_elbo": 0.1 + 0.2, "valid_elbo": -101.0, "seconds": 1.0, "kl_weight": 0.5},
    {"epoch": 4, "train_elbo": -99.0, "valid_elbo": -98.5, "seconds": 1.0, "kl_weight": 1.0},
]


def test_csv_is_rebuilt_from_metrics_jsonl_when_a_row_was_lost(tmp_path):
    uninterrupted = tmp_path / "a"
    uninterrupted.mkdir()
    lg = CSVLogger()
    lg.start(uninterrupted, CONFIG)
    for r in MORE:
        lg.log_epoch(r)
    # a run killed after epoch 2's checkpoint, before its csv row: metrics.jsonl has 1, 2 (and a partial line)
    run = tmp_path / "b"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MORE[:2]) + '{"epoch": 3, "tra')
    (run / "metrics.csv").write_text("epoch,train_elbo,valid_elbo,seconds\n1,-120.5,-118.25,1.5\n")
    resumed = CSVLogger()
    resumed.start(run, CONFIG)
    assert [r["epoch"] for r in read_csv(run / "metrics.csv")] == ["1", "2"]
    for r in MORE[2:]:  # what fit does: metrics.jsonl first, then the logger
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")
        resumed.log_epoch(r)
    assert (run / "metrics.csv").read_text() == (uninterrupted / "metrics.csv").read_text()
    rows = read_csv(run / "metrics.csv")
    assert rows[1]["valid_elbo"] == "" and float(rows[2]["train_elbo"]) == 0.1 + 0.2 and rows[0]["kl_weight"] == ""


def test_csv_rows_survive_a_crash_between_checkpoint_and_row(tmp_path, monkeypatch):
    from pyro_vae import fit
    from pyro_vae.runs.run import read_metrics

    original = CSVLogger.log_epoch

    def crash(self, record):
        if record["epoch"] == 2:
            raise RuntimeError("killed")  # after epoch 2's metrics.jsonl and checkpoint.pt
        original(self, record)

    settings = dict(dataset="digits", hidden=(8,), z_dim=2, batch_size=256, device="cpu", quiet=True)
    monkeypatch.setattr(CSVLogger, "log_epoch", crash)
    with pytest.raises(RuntimeError, match="killed"):
        fit(out=tmp_path / "run", epochs=3, loggers=["csv"], **settings)
    monkeypatch.setattr(CSVLogger, "log_epoch", original)
    fit(out=tmp_path / "run", epochs=3, resume=True, loggers=["csv"], **settings)
    rows, metrics = read_csv(tmp_path / "run" / "metrics.csv"), read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] == [m["epoch"] for m in metrics]
    assert [float(r["train_elbo"]) for r in rows] == [m["train_elbo"] for m in metrics]


def test_logger_files_and_folders_are_never_written_through_links(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").symlink_to(elsewhere / "victim.csv")
    (elsewhere / "victim.csv").write_text("mine\n")
    lg = CSVLogger()
    lg.path, lg.header, lg.rows = run / "metrics.csv", list(RECORDS[0]), [dict(RECORDS[0])]
    with pytest.raises(UserError, match="symbolic link"):  # the append of a row
        lg.log_epoch(RECORDS[1])
    (run / "metrics.jsonl").write_text(json.dumps(RECORDS[0]) + "\n")
    with pytest.raises(UserError, match="symbolic link"):  # the rebuild at start
        CSVLogger().start(run, CONFIG)
    assert (elsewhere / "victim.csv").read_text() == "mine\n"
    for name, folder in (("tensorboard", "tensorboard"), ("mlflow", "mlruns")):
        pytest.importorskip(name, reason=f"the {name} extra is not installed")
        (run / folder).symlink_to(elsewhere)
        with pytest.raises(UserError, match=f"{folder} is a symbolic link"):
            build_loggers([name]).start(run, CONFIG)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["victim.csv"]


@pytest.mark.parametrize("names,every,message", [
    (5, 5, "loggers must be a list of logger names"), ([1], 5, "loggers must be a list of logger names"),
    (["csv"], "x", "--log-images-every must be an integer, got 'x'"), (["csv"], -1, "must be at least 0, got -1"),
])  # fmt: skip
def test_build_loggers_validates_as_the_cli(names, every, message):
    with pytest.raises(UserError, match=message):
        build_loggers(names, every)


def test_one_logger_name_as_a_string_is_that_logger():
    assert [type(lg) for lg in build_loggers("csv").loggers] == [CSVLogger]
