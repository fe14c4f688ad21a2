"""The benchmark helpers that decide what a GPU call runs and how its rows are labelled."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _probe(tmp_path, name, ips, wall, train_time, epochs=2, train_size=60000, **extra):
    row = {"train_images_per_s": ips, "wall_s": wall, "train_time_total_s": train_time, "epochs": epochs,
           "train_size": train_size, **extra}
    (tmp_path / f"train_{name}.jsonl").write_text(json.dumps(row) + "\n")


def test_size_epochs_fits_the_slowest_arm(tmp_path):
    tb = _module("train_bench")
    # arm a: 60000 / 6000 = 10 s of training + (14 - 4) / 2 = 5 s outside it = 15 s an epoch;
    # arm b: 60000 / 3000 = 20 s + 2 s = 22 s an epoch, the slower: int(0.85 * 500 / 22) = 19
    _probe(tmp_path, "a", 6000.0, 14.0, 4.0)
    _probe(tmp_path, "b", 3000.0, 10.0, 6.0)
    assert tb.size_epochs(str(tmp_path), 500, 100) == 19
    assert tb.size_epochs(str(tmp_path), 500, 10) == 10          # never past the recipe
    assert tb.size_epochs(str(tmp_path), 1, 100) == 1            # at least one epoch


def test_size_epochs_refuses_a_failed_or_missing_probe(tmp_path):
    tb = _module("train_bench")
    with pytest.raises(RuntimeError, match="no complete probe rows"):
        tb.size_epochs(str(tmp_path), 500, 100)
    _probe(tmp_path, "a", 6000.0, 14.0, 4.0)
    (tmp_path / "train_b.jsonl").write_text(json.dumps({"failed": "diverged"}) + "\n")
    with pytest.raises(RuntimeError, match="no complete probe rows"):
        tb.size_epochs(str(tmp_path), 500, 100)


def test_a_shortened_schedule_is_labelled_against_the_recipe(monkeypatch):
    tb, tables = _module("train_bench"), _module("tables")
    assert tb.recipe_epochs("configs/ide_f64c5_mnist_lif.yaml") == 100
    assert tb.recipe_epochs("configs/no_such_config.yaml") is None
    base = {"config": "configs/ide_f64c5_mnist_lif.yaml", "overrides": ["train.epochs=40"], "data": "mnist",
            "model": {"time_steps": 30}, "rule": {"name": "ide"}, "seed": 0, "test_acc": 0.99,
            "best_test_acc": 0.99, "train_images_per_s": 1.0, "device": "cpu", "commit": "x"}
    rows = [dict(base, epochs=40, planned_epochs=40, shortened=False, recipe_epochs=100),
            dict(base, epochs=100, planned_epochs=100, shortened=False, recipe_epochs=100, seed=1)]
    monkeypatch.setattr(tables, "_rows", lambda name: rows)
    lines = tables.train_table().splitlines()[2:]
    assert "| 40 (schedule shortened from the recipe's 100) |" in lines[0]
    assert "| 100 |" in lines[1] and "shortened" not in lines[1]


def test_nonfinite_overhead_benchmark_at_toy_size(tmp_path):
    """The gpu_more suite's issue-18 measurement runs on the CPU at toy size: every arm, the
    per-step medians, and the defaults leave the gradients out of the per-step flags on the CPU."""
    import subprocess

    out = tmp_path / "nf.jsonl"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nonfinite_overhead.py"), "--cases", "mlp_bp",
                    "--steps", "3", "--rounds", "1", "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    rows = {r["arm"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"off", "every50", "every50_step", "every1_step"}
    assert not rows["every50"]["gradients_flagged_every_step"] and rows["every50_step"]["gradients_flagged_every_step"]
    assert rows["off"]["overhead_per_step_median"] == 0 and all(r["median_per_step_ms"] > 0 for r in rows.values())

def test_two_routes_fidelity_replays_the_rules_noise_and_options():
    """The torch side of benchmarks/fidelity_two_routes.py (no TensorFlow needed): for every case,
    the noise replayed from the rule's generator gives exactly the B.grad of the rule's step (else
    the reference would be fed other noise), and the reference-option cases use the options the
    docs name."""
    mod = _module("fidelity_two_routes")
    cases = mod.cases()
    assert {c["options"] for c in cases} == set(mod.DEVIATIONS)
    assert mod.REFERENCE_OPTIONS == {"position_mean": False, "reg_bias": True, "noise_padding": "reference"}
    for c in cases:
        arrays, ours = mod.our_case(c, c["options"])  # raises if the replay differs from B.grad
        if c["rule"] in ("wm", "ia"):
            ring = c["kind"] == "conv" and c["stride"] > 1 and c["padding"] > 0
            grow = 2 * c["padding"] if ring else 0
            assert arrays["noise"].shape[-1] == arrays["x"].shape[-1] + grow


def test_figures_from_other_runs_come_from_published_json_with_their_sources(tmp_path, monkeypatch):
    """Published accuracies and the reference codes' timings live in benchmarks/published.json,
    each section naming its source; the tables read them from there (changing the file changes
    the table) and call a quotient with such a figure a cross-run comparison, not a ratio."""
    tables = _module("tables")
    data = json.loads(tables.PUBLISHED_FILE.read_text())
    sections = {k: v for k, v in data.items() if not k.startswith("_")}
    assert set(sections) == {"accuracy", "ide_original_speed", "pc_reference_speed"}
    for name, sec in sections.items():
        assert sec.get("_source"), f"{name} names no source"
    for config, entry in data["accuracy"].items():
        if not config.startswith("_"):
            assert entry["figure"] and entry["source"], config
    changed = json.loads(json.dumps(data))
    changed["pc_reference_speed"]["bp_ms"] = 1000.0
    config = next(k for k in data["accuracy"] if not k.startswith("_"))
    changed["accuracy"][config]["figure"] = "12.34 (planted)"
    f = tmp_path / "published.json"
    f.write_text(json.dumps(changed))
    before = tables.pc_speed_table()
    monkeypatch.setattr(tables, "PUBLISHED_FILE", f)
    assert tables._published_accuracy(config) == "12.34 (planted)"
    after = tables.pc_speed_table()
    if "No results" not in before:
        assert after != before and "cross-run, not a ratio" in after.splitlines()[0]

def test_ekdaa_table_aggregates_seeds_against_bp_of_the_same_setting(monkeypatch):
    tables = _module("tables")
    base = {"config": "configs/ekdaa_fmnist_mlp.yaml", "data": "fashion_mnist", "epochs": 10, "planned_epochs": 10,
            "recipe_epochs": 10, "train_size": 60000, "model": {"name": "ekdaa_mlp", "activation": "tanh"},
            "device": "cpu", "commit": "c"}

    def row(rule, seed, acc, **kw):
        return dict(base, rule=rule, seed=seed, test_acc=acc, **{"overrides": [f"train.seed={seed}"], **kw})

    ek = {"name": "ekdaa", "e_init": "random"}
    rows = [row({"name": "bp"}, 0, 0.86), row({"name": "bp"}, 1, 0.88), row({"name": "bp"}, 2, 0.87),
            row(ek, 0, 0.80), row(ek, 1, 0.82), row(ek, 2, 0.78),
            # the same arms at another lr: a setting of their own, never averaged with the rows above
            row({"name": "bp"}, 0, 0.50, overrides=["train.seed=0", "optim.lr=0.01"]),
            row(ek, 0, 0.495, overrides=["train.seed=0", "optim.lr=0.01"])]
    monkeypatch.setattr(tables, "_rows", lambda name: rows)
    monkeypatch.setattr(tables, "_rows_release", lambda: [])
    lines = [l for l in tables.ekdaa_table().splitlines() if l.startswith("| fashion_mnist |")]
    assert len(lines) == 4
    bp05, ek05 = [l for l in lines if "| 0.05 |" in l]
    # means 87.00 and 80.00, sample sd 1.00 and 2.00, gap -7.00: far outside noise
    assert "| 3 (0, 1, 2) | 87.00 +- 1.00 | 86.00 - 88.00 | - | - |" in bp05
    assert "| random | - |" in ek05 and "| 3 (0, 1, 2) | 80.00 +- 2.00 | 78.00 - 82.00 | -7.00 | below |" in ek05
    ek01 = [l for l in lines if "| 0.01 |" in l and "| ekdaa |" in l][0]
    assert "| 1 (0) | 49.50 | 49.50 - 49.50 | -0.50 | yes (1 seed) |" in ek01
