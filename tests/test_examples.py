"""The examples run as a user runs them (``--quick`` sizes) and print what they claim."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _run(name: str) -> dict:
    r = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_first_run_trains_and_writes_a_run():
    out = _run("first_run.py")
    assert out["test_acc"] > 0.3
    assert (Path(out["run_dir"]) / "metrics.jsonl").is_file()


def test_compare_rules():
    out = _run("compare_rules.py")
    assert set(out) == {"bp", "fa", "kp", "sa", "pc"}
    assert out["pc"]["angle_to_bp_first_layer"] < 1 and out["bp"]["angle_to_bp_first_layer"] < 1
    assert out["pc"]["test_acc"] == pytest.approx(out["bp"]["test_acc"], abs=0.5)  # FixedPred(1, L) is BP
    assert out["fa"]["angle_to_bp_first_layer"] > 10


def test_ide_memory_is_flat_in_T_and_bptt_grows():
    out = _run("ide_memory_vs_T.py")
    ide, bptt = out["ide"], out["bptt"]
    assert len(set(ide.values())) == 1
    ts = sorted(bptt, key=int)
    assert all(bptt[a] < bptt[b] for a, b in zip(ts, ts[1:])) and bptt[ts[-1]] > 2 * ide[ts[-1]]


def test_alignment_angles():
    out = _run("alignment_angles.py")
    kp, fa = out["kp"], out["fa"]
    assert kp[-1]["angles"][-1] < kp[0]["angles"][-1] - 30  # KP's B -> W
    assert fa[-1]["angles"][-1] > 40                          # FA's B stays unrelated


def test_export_nir_round_trip():
    pytest.importorskip("nir")
    out = _run("export_nir.py")
    assert out["bytes"] > 0 and out["max_diff_rebuilt_vs_model"] == 0 and out["max_diff_graph_vs_model"] < 1e-5
