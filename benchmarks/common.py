"""Helpers shared by the benchmark scripts: environment record, timing, JSON-lines output."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bioprop.train import environment  # noqa: E402


def time_ms(fn: Callable[[], None], device: torch.device, warmup: int = 5, repeat: int = 30) -> Dict[str, float]:
    """Median and spread of ``fn``'s wall time in ms (device-synchronised; CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeat": repeat}


def training_throughput(step: Callable[[], None], device: torch.device, batch: int, warmup: int, repeat: int,
                        prefix: str = "") -> Dict[str, float]:
    """Time ``step`` (one training step on a batch of ``batch``) with :func:`time_ms` from a clean
    peak-memory counter: the timing keys (with ``prefix``), ``train_images_per_s`` and
    ``peak_memory_mib`` (``torch.cuda.max_memory_allocated``; ``None`` off CUDA). A
    ``torch.OutOfMemoryError`` propagates to the caller."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t = time_ms(step, device, warmup=warmup, repeat=repeat)
    out: Dict[str, float] = {f"{prefix}{k}": v for k, v in t.items()}
    out["train_images_per_s"] = batch / (t["median_ms"] / 1e3)
    out["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return out


def command_line(argv: List[str] = None) -> str:
    """The command that reproduces a script's rows: ``python benchmarks/x.py ARGS`` (the script's
    path relative to the repository root when inside it)."""
    import shlex

    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else None
    head = str(script.relative_to(ROOT)) if script and script.is_relative_to(ROOT) else (argv[0] if argv else "")
    return shlex.join(["python", head] + argv[1:])


def write_lines(path, rows: List[dict]) -> None:
    """Append ``rows`` as JSON lines to ``path``; each row records the ``command`` that
    reproduces it (unless it names one already; the suite runner replaces it with its own)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = command_line()
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps({**r, "command": r.get("command", cmd)}) + "\n")


__all__ = ["ROOT", "environment", "time_ms", "training_throughput", "write_lines", "command_line", "parse_model_kw"]


def parse_model_kw(text: str) -> Dict[str, object]:
    """``--model-kw 'k=v;k=v'`` -> {k: v} with each value read as YAML (``channels=[8,8]`` -> list)."""
    import yaml

    out: Dict[str, object] = {}
    for kv in filter(None, text.split(";")):
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"--model-kw: {kv!r} is not k=v (separate entries with ';')")
        out[k.strip()] = yaml.safe_load(v)
    return out
