"""``bioprop plot RUN_DIR`` (bioprop.plot) and ``train.tensorboard`` on runs the tests make."""

import json
import sys

import pytest

from bioprop.cli import main
from bioprop.config import ConfigError
from bioprop.plot import find_runs, load_metrics, panels
from bioprop.train import RunConfig, Trainer


def _quiet(*a, **k):
    pass


def _run(tmp_path, name, model, rule, **train):
    cfg = RunConfig.from_dict({
        "model": model, "rule": rule,
        "data": {"name": "mnist_embedded", "train_limit": 128, "batch_size": 64, "eval_batch_size": 1000},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"epochs": 2, "seed": 0, "device": "cpu", "out_dir": str(tmp_path), "name": name,
                  "progress": False, **train},
    })
    return Trainer(cfg, log=_quiet).fit()["run_dir"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    fa = _run(d, "fa", {"name": "mlp", "hidden": [16]}, {"name": "fa", "angle_every": 1, "compare_every": 1})
    ide = _run(d, "ide", {"name": "f400", "hidden": 16, "time_steps": 3}, {"name": "ide"}, max_steps_per_epoch=1)
    return d, fa, ide


def test_panels_cover_loss_accuracy_rates_solver_and_angles(runs):
    d, fa, ide = runs
    assert find_runs([str(d)]) == sorted([find_runs([fa])[0], find_runs([ide])[0]])
    got = panels({"fa": load_metrics(fa), "ide": load_metrics(ide)})
    assert list(got)[:2] == ["loss", "accuracy"]
    assert {"firing rate", "solver iterations", "B-W angle (deg)", "update vs BP angle (deg)"} <= set(got)
    # each line is one run's column over the epochs, with the values of metrics.jsonl
    rows = load_metrics(fa)
    (line,) = [ln for ln in got["loss"] if ln[0] == "fa" and ln[1] == "test"]
    assert line[2] == [1, 2] and line[3] == [r["test_loss"] for r in rows]
    assert {ln[0] for ln in got["B-W angle (deg)"]} == {"fa"}   # only the Two Routes run logs angles
    assert {ln[0] for ln in got["solver iterations"]} == {"ide"}
    assert all(0.0 <= v <= 1.0 for ln in got["firing rate"] for v in ln[3])
    # --prefix: every column below it, one panel per next name part
    assert set(panels({"fa": rows}, prefix="train/align/")) == {"B_W_angle", "update_angle"}


def test_cli_plot_writes_a_png(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    d, fa, ide = runs
    out = tmp_path / "fig.png"
    assert main(["plot", fa, ide, "--out", str(out), "--title", "test"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert capsys.readouterr().out.strip() == str(out)


def test_cli_plot_errors_are_one_line(runs, tmp_path, capsys, monkeypatch):
    d, fa, ide = runs
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl in it or below it" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    assert main(["plot", fa, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'bioprop: bioprop plot needs matplotlib: pip install "bioprop[plot]"'
    assert not (tmp_path / "x.png").exists()


class _FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter (records what the Trainer writes)."""

    made = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        _FakeWriter.made.append(self)

    def add_scalar(self, tag, value, global_step):
        self.scalars.append((tag, value, global_step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_scalars_follow_metrics_jsonl(tmp_path, monkeypatch):
    import types

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _FakeWriter.made.clear()
    run = _run(tmp_path, "tb", {"name": "mlp", "hidden": [8]}, {"name": "bp"}, tensorboard=True)
    (w,) = _FakeWriter.made
    assert w.log_dir.endswith("tb/tensorboard") and w.closed
    rows = [json.loads(x) for x in open(f"{run}/metrics.jsonl")]
    got = {(tag, step): v for tag, v, step in w.scalars}
    for r in rows:
        assert got[("loss/train", r["epoch"])] == r["train_loss"] and got[("acc/test", r["epoch"])] == r["test_acc"]
        assert got[("lr", r["epoch"])] == r["lr"]
    assert not any(tag in ("epoch", "step") for tag, _, _ in w.scalars)


def test_tensorboard_missing_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r'needs the tensorboard package: pip install "bioprop\[tensorboard\]"'):
        _run(tmp_path, "tb", {"name": "mlp", "hidden": [8]}, {"name": "bp"}, tensorboard=True)


def test_tensorboard_event_files_are_readable(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path, "tb", {"name": "mlp", "hidden": [8]}, {"name": "bp"}, tensorboard=True)
    acc = EventAccumulator(f"{run}/tensorboard")
    acc.Reload()
    rows = [json.loads(x) for x in open(f"{run}/metrics.jsonl")]
    events = acc.Scalars("acc/test")
    assert [e.step for e in events] == [1, 2]
    assert [e.value for e in events] == pytest.approx([r["test_acc"] for r in rows], abs=1e-6)
