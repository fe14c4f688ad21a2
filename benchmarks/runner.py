"""The benchmark runner: named suites of benchmark entries, declared in ``benchmarks/suites.yaml``.

    python -m benchmarks                          # list the suites
    python -m benchmarks SUITE --list             # its entries, budgets and which are done
    python -m benchmarks SUITE --dry-run          # what a run would do, nothing run
    python -m benchmarks SUITE [--data-dir DIR] [--out DIR] [--budget S] [--only ID,...] [--toy]
    python -m benchmarks --merge DIR              # append DIR's result rows to benchmarks/results/
    bioprop bench SUITE ...                       # the same, from a source checkout

An entry is either a script (``script: benchmarks/ide_speed.py`` + ``args``) or a training run
(``config: configs/x.yaml`` + ``overrides`` + ``seeds``, run by ``benchmarks/train_bench.py``);
each names the results file it feeds (``results: train.jsonl``) and the table that shows it, and
carries a time budget in seconds (``budget_s``, estimated from recorded timings). Entries run one
after the other, in the order declared (their priority), each in its own process.

Resumable by itself: every row an entry writes gets ``bench_key`` = ``SUITE:ENTRY:sSEED:HASH``
(HASH: of the entry's script and arguments, or of its parsed config file and overrides; no
commit), and an entry whose key already has rows in the results file (in ``--out`` or in
``benchmarks/results/``) is skipped. A training entry stopped before its end (out of budget,
killed) left checkpoints in its run directory (``--runs``, default ``runs/bench/``): the next
invocation continues it from the last one (the Trainer's resume). With ``--out``, the run
directories of stopped runs are also packed into ``OUT/bench_SUITE_partial.tgz``, which the next
invocation unpacks when it finds it in its own ``--out`` (a fresh machine: copy the first call's
files into the second call's ``--out``).

Budget: an entry starts only if the time used so far plus its ``budget_s`` fits the budget of
this invocation (``--budget``, default the suite's ``budget_s``); a running entry is stopped when
the budget is used up. Skipped and stopped entries are recorded in ``bench_SUITE_status.jsonl``
(next to the log ``bench_SUITE.log``, both in ``--out``, else in the runs directory).

Rows also record ``command``: the script command that reproduces them (with the results file it
appends to), and ``suite_command``: this runner's command for the one entry. ``--toy`` runs every
entry at toy size (the entry's ``toy_args`` / the suite's and entry's ``toy_overrides``; seconds
each) to check a suite end to end on a CPU; toy rows are marked ``toy: true`` and must go to an
``--out`` folder, never to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SUITES = ROOT / "benchmarks" / "suites.yaml"
TRAIN_BENCH = "benchmarks/train_bench.py"
DEFAULT_CONFIG = "src/bioprop/default.yaml"

_ENTRY_KEYS = {"id", "script", "module", "config", "args", "toy_args", "overrides", "toy_overrides", "seeds",
               "results", "table", "budget_s", "toy_budget_s", "bench", "requires_cuda", "note", "always"}
_SUITE_KEYS = {"description", "budget_s", "toy_overrides", "entries", "replaces", "data"}


class SuiteError(ValueError):
    """A suite file, suite or entry that cannot be run as declared."""


# -- the suite file ------------------------------------------------------------------------------
def load_suites(path: Optional[Path] = None) -> Dict[str, Dict[str, Any]]:
    """The suites of ``path`` (default ``benchmarks/suites.yaml``), checked: unknown keys, missing
    ids, an entry that is neither a script nor a config, duplicate ids."""
    path = Path(path or SUITES)
    raw = yaml.safe_load(path.read_text()) or {}
    suites = raw.get("suites")
    if not isinstance(suites, dict) or not suites:
        raise SuiteError(f"{path}: expected a top-level 'suites:' mapping of suite name -> suite")
    for name, s in suites.items():
        bad = set(s) - _SUITE_KEYS
        if bad:
            raise SuiteError(f"{path}: suite {name!r}: unknown keys {sorted(bad)} (known: {sorted(_SUITE_KEYS)})")
        ids = set()
        for e in s.get("entries") or []:
            where = f"{path}: suite {name!r}, entry {e.get('id')!r}"
            bad = set(e) - _ENTRY_KEYS
            if bad:
                raise SuiteError(f"{where}: unknown keys {sorted(bad)} (known: {sorted(_ENTRY_KEYS)})")
            if not e.get("id"):
                raise SuiteError(f"{path}: suite {name!r}: an entry without 'id'")
            if e["id"] in ids:
                raise SuiteError(f"{where}: duplicate id")
            ids.add(e["id"])
            kinds = [k for k in ("script", "module", "config") if k in e]
            if len(kinds) != 1:
                raise SuiteError(f"{where}: give exactly one of 'script', 'module' or 'config'")
            if not e.get("results") and not e.get("always"):
                raise SuiteError(f"{where}: name the results file it feeds ('results: x.jsonl'), "
                                 "or mark it 'always: true' (it writes no rows and runs every time)")
    return suites


def _jobs(suite_name: str, suite: Dict[str, Any], toy: bool) -> List[Dict[str, Any]]:
    """One job per (entry, seed): the entry's settings, its key and its commands."""
    jobs = []
    for e in suite.get("entries") or []:
        seeds = e.get("seeds", [None]) if "config" in e else [None]
        for seed in seeds:
            j = dict(e)
            j["seed"] = seed
            j["toy"] = toy
            j["budget"] = float(e.get("toy_budget_s", 30) if toy else e.get("budget_s", 60))
            if "config" in e:
                cfg = e["config"] or DEFAULT_CONFIG
                j["config"] = cfg
                over = _flat(e.get("overrides"))
                if toy:
                    over += _flat(suite.get("toy_overrides")) + _flat(e.get("toy_overrides"))
                own_seed = ((_read_yaml(cfg).get("train") or {}).get("seed", 0))
                if seed is not None and seed != own_seed:
                    over.append(f"train.seed={seed}")
                j["overrides"] = over
                spec = {"config": _read_yaml(cfg), "overrides": over}
            else:
                args = list(e.get("args") or []) + (list(e.get("toy_args") or []) if toy else [])
                j["args"] = [str(a) for a in args]
                spec = {"script": e.get("script"), "module": e.get("module"), "args": j["args"]}
            spec["toy"] = toy
            h = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
            j["key"] = f"{suite_name}:{e['id']}:s{0 if seed is None else seed}:{h}"
            j["slug"] = f"{e['id']}-s{0 if seed is None else seed}-{h}"
            jobs.append(j)
    return jobs


def _flat(items) -> List[str]:
    """A list of overrides, with the nested lists of YAML aliases (``[*common, rule=fa]``) flattened."""
    out: List[str] = []
    for x in items or []:
        out.extend(_flat(x) if isinstance(x, list) else [str(x)])
    return out


def _read_yaml(rel: str) -> Dict[str, Any]:
    p = ROOT / rel
    if not p.is_file():
        raise SuiteError(f"config {rel} not found (paths are relative to the repository root)")
    return yaml.safe_load(p.read_text()) or {}


# -- results -------------------------------------------------------------------------------------
def _read_rows(path: Path) -> List[Dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: ignored
    return rows


def done_keys(results_dirs: List[Path], names: List[str]) -> set:
    keys = set()
    for d in results_dirs:
        for n in names:
            keys.update(r["bench_key"] for r in _read_rows(d / n) if r.get("bench_key"))
    return keys


def merge(src: Path, dest: Path = RESULTS) -> Dict[str, int]:
    """Append the rows of ``src/*.jsonl`` (a suite's ``--out``) that ``dest`` lacks to ``dest``;
    toy rows and the runner's status files are left out. Returns rows added per file."""
    added = {}
    for f in sorted(Path(src).glob("*.jsonl")):
        if f.name.startswith("bench_"):
            continue
        have = {json.dumps(r, sort_keys=True) for r in _read_rows(dest / f.name)}
        new = [r for r in _read_rows(f) if not r.get("toy") and json.dumps(r, sort_keys=True) not in have]
        if new:
            dest.mkdir(parents=True, exist_ok=True)
            with open(dest / f.name, "a") as fh:
                for r in new:
                    fh.write(json.dumps(r) + "\n")
        added[f.name] = len(new)
    return added


# -- commands ------------------------------------------------------------------------------------
def _command(j: Dict[str, Any], out_file: str, data_dir: Optional[str], runs: str = "", out: str = "") -> List[str]:
    """The command line of job ``j`` writing its rows to ``out_file`` (paths relative to ROOT);
    ``{data_dir}``, ``{runs}`` and ``{out}`` in a script's args become ``data_dir``, ``runs``, ``out``."""
    if "config" in j:
        cmd = ["python", TRAIN_BENCH, "--config", j["config"]]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        if j.get("bench"):
            cmd += ["--bench", j["bench"]]
        return cmd + ["--out", out_file] + j["overrides"]
    args = [a.replace("{data_dir}", data_dir or ".").replace("{runs}", runs).replace("{out}", out) for a in j["args"]]
    head = ["python", "-m", j["module"]] if j.get("module") else ["python", j["script"]]
    return head + args + (["--out", out_file] if j.get("results") else [])


def _rel(p: Path) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


class Runner:
    def __init__(self, suite_name: str, suite: Dict[str, Any], out: Optional[Path], data_dir: Optional[str],
                 runs: Optional[Path], budget: Optional[float], toy: bool, only: Optional[List[str]],
                 log=print, in_process: bool = False):
        self.name, self.suite, self.toy = suite_name, suite, toy
        self.out = Path(out).resolve() if out else None
        self.results = self.out or RESULTS
        self.data_dir = data_dir
        self.runs = Path(runs or ROOT / "runs" / "bench").resolve() / suite_name
        self.meta = self.out or self.runs  # where the log and the status lines go
        self.budget = budget if budget is not None else (None if toy else suite.get("budget_s"))
        self.log = log
        self.in_process = in_process
        self.jobs = _jobs(suite_name, suite, toy)
        if only:
            unknown = set(only) - {j["id"] for j in self.jobs}
            if unknown:
                raise SuiteError(f"--only: no entries {sorted(unknown)} in suite {suite_name!r} "
                                 f"(entries: {', '.join(dict.fromkeys(j['id'] for j in self.jobs))})")
            self.jobs = [j for j in self.jobs if j["id"] in only]
        if toy and (self.out is None or self.out == RESULTS.resolve()):
            raise SuiteError("--toy writes toy rows: pass --out DIR (a scratch folder, not benchmarks/results)")

    # which jobs are done
    def done(self) -> set:
        names = sorted({j["results"] for j in self.jobs if j.get("results")})
        dirs = [self.results] + ([] if self.toy or self.results == RESULTS else [RESULTS])
        return done_keys(dirs, names)

    def suite_command(self, j) -> str:
        parts = ["python", "-m", "benchmarks", self.name, "--only", j["id"]]
        if self.data_dir:
            parts += ["--data-dir", self.data_dir]
        if self.toy:
            parts.append("--toy")
        return shlex.join(parts)

    def shown_command(self, j) -> str:
        dest = _rel(self.results / j["results"]) if j.get("results") else ""
        return shlex.join(_command(j, dest, self.data_dir, _rel(self.runs), _rel(self.results)))

    def run_dir(self, j) -> Path:
        return self.runs / j["slug"]

    def has_checkpoint(self, j) -> bool:
        return any(self.run_dir(j).glob("*/checkpoints/latest")) if self.run_dir(j).is_dir() else False

    def plan(self) -> List[Dict[str, Any]]:
        done = self.done()
        rows = []
        for j in self.jobs:
            state = "done" if j["key"] in done else ("partial" if "config" in j and self.has_checkpoint(j) else "pending")
            if j.get("always"):
                state = "always"
            rows.append({"id": j["id"], "seed": j["seed"], "state": state, "budget_s": j["budget"],
                         "results": j.get("results"), "table": j.get("table"), "key": j["key"],
                         "command": self.shown_command(j)})
        return rows

    # running
    def _status(self, j, status: str, seconds: float = 0.0, **extra) -> None:
        self.meta.mkdir(parents=True, exist_ok=True)
        row = {"suite": self.name, "entry": j["id"], "seed": j["seed"], "key": j["key"], "status": status,
               "seconds": round(seconds, 1), "budget_s": j["budget"], "toy": self.toy,
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
        with open(self.meta / f"bench_{self.name}_status.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        seed = "" if j["seed"] is None else f" seed {j['seed']}"
        self.log(f"[{self.name}] {j['id']}{seed}: {status}" + (f" ({seconds:.0f} s)" if seconds else ""))

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)] + (
            [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("CI", "true")  # no progress bars in the logs
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _unpack_partial(self) -> None:
        tgz = self.out / f"bench_{self.name}_partial.tgz" if self.out else None
        if tgz is None or not tgz.is_file():
            return
        self.runs.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers() if not (self.runs / m.name.split("/")[0]).exists()]
            tar.extractall(self.runs, members=members, filter="data")
        if members:
            self.log(f"[{self.name}] unpacked stopped runs from {tgz}")

    def _pack_partial(self, jobs) -> None:
        if self.out is None:
            return
        tgz = self.out / f"bench_{self.name}_partial.tgz"
        partial = [j for j in jobs if "config" in j and self.has_checkpoint(j) and j["key"] not in self.done()]
        if not partial:
            tgz.unlink(missing_ok=True)
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tgz, "w:gz") as tar:
            for j in partial:
                rd = self.run_dir(j)
                for run in rd.iterdir():
                    latest = run / "checkpoints" / "latest"
                    if not latest.is_file():
                        continue
                    ck = run / "checkpoints" / latest.read_text().strip()
                    for f in [latest, *sorted(ck.glob("*")), *sorted(run.glob("*.*"))]:
                        if f.is_file():
                            tar.add(f, arcname=str(f.relative_to(self.runs)))
        self.log(f"[{self.name}] stopped runs packed into {tgz} (the next invocation with this --out continues them)")

    def run(self) -> int:
        self.meta.mkdir(parents=True, exist_ok=True)
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
        self._unpack_partial()
        done = self.done()
        t_start = time.monotonic()
        failures = 0
        cuda = None
        logf = open(self.meta / f"bench_{self.name}.log", "a")
        try:
            for j in self.jobs:
                if j["key"] in done and not j.get("always"):
                    self._status(j, "already done")
                    continue
                if j.get("requires_cuda"):
                    cuda = _cuda() if cuda is None else cuda
                    if not cuda:
                        self._status(j, "skipped: needs CUDA")
                        continue
                used = time.monotonic() - t_start
                if self.budget is not None and used + j["budget"] > self.budget:
                    self._status(j, "skipped: budget", used_s=round(used, 1), suite_budget_s=self.budget)
                    continue
                remaining = None if self.budget is None else self.budget - used
                rc, seconds, stopped = self._run_job(j, remaining, logf)
                if stopped:
                    self._status(j, "stopped: budget used up" + (" (resumes from its checkpoint)"
                                                                  if self.has_checkpoint(j) else ""), seconds)
                elif rc != 0:
                    failures += 1
                    self._status(j, f"failed (exit {rc}; see bench_{self.name}.log)", seconds)
                else:
                    self._status(j, "ran", seconds)
        finally:
            logf.close()
            self._pack_partial(self.jobs)
        return 1 if failures else 0

    def _run_job(self, j, remaining: Optional[float], logf):
        partial_dir = self.runs / "partial"
        partial_dir.mkdir(parents=True, exist_ok=True)
        tmp = partial_dir / f"{j['slug']}.jsonl"
        tmp.unlink(missing_ok=True)
        cmd = _command(j, str(tmp), self.data_dir, str(self.runs), str(self.results))
        cmd[0] = sys.executable
        if "config" in j:
            rd = self.run_dir(j)
            if self.has_checkpoint(j):
                cmd.insert(2, "--resume")
            elif rd.exists():
                shutil.rmtree(rd)  # stopped before its first checkpoint: start over
            cmd.append(f"train.out_dir={rd}")
        logf.write(f"\n===== {self.name}/{j['id']} seed={j['seed']} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
                   f"$ {shlex.join(cmd)}\n")
        logf.flush()
        self.log(f"[{self.name}] {j['id']}: running (budget {j['budget']:.0f} s"
                 + ("" if remaining is None else f", {remaining:.0f} s left") + ")")
        t0 = time.monotonic()
        if self.in_process:
            rc, stopped = _run_in_process(cmd, logf), False
        else:
            rc, stopped = self._run_subprocess(cmd, remaining, logf)
        seconds = time.monotonic() - t0
        return self._collect(j, tmp, rc, seconds, stopped, logf)

    def _run_subprocess(self, cmd, remaining, logf):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self._env(), stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        stopped = False
        try:
            rc = proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            stopped = True
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        return rc, stopped

    def _collect(self, j, tmp, rc, seconds, stopped, logf):
        rows = _read_rows(tmp)
        if rows and j.get("results"):
            tags = {"bench_key": j["key"], "suite": self.name, "entry": j["id"],
                    "command": self.shown_command(j), "suite_command": self.suite_command(j)}
            if self.toy:
                tags["toy"] = True
            self.results.mkdir(parents=True, exist_ok=True)
            with open(self.results / j["results"], "a") as f:
                for r in rows:
                    f.write(json.dumps({**r, **tags}) + "\n")
        tmp.unlink(missing_ok=True)
        if stopped:
            return rc, seconds, True
        if rc == 0 and j.get("results") and not rows:
            logf.write(f"{j['id']}: exited 0 but wrote no rows\n")
            return 3, seconds, False
        return rc, seconds, False


def _run_in_process(cmd: List[str], logf) -> int:
    """Run ``cmd`` (``python SCRIPT ARGS`` or ``python -m MODULE ARGS``) inside this process
    (tests: no interpreter start-up per entry; no deadline): argv, cwd, sys.path and the output
    streams set as a subprocess would see them. Returns its exit status."""
    import contextlib
    import runpy
    import traceback

    argv, cwd, path, env_ci = list(sys.argv), os.getcwd(), list(sys.path), os.environ.get("CI")
    os.chdir(ROOT)
    os.environ["CI"] = "true"
    rc = 0
    try:
        with contextlib.redirect_stdout(logf), contextlib.redirect_stderr(logf):
            try:
                if cmd[1] == "-m":
                    sys.argv = [cmd[2]] + cmd[3:]
                    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
                    runpy.run_module(cmd[2], run_name="__main__", alter_sys=True)
                else:
                    sys.argv = cmd[1:]
                    sys.path[:0] = [str((ROOT / cmd[1]).parent), str(ROOT / "src")]
                    runpy.run_path(str(ROOT / cmd[1]), run_name="__main__")
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # noqa: BLE001 - the entry failed; its traceback goes to the log
                traceback.print_exc()
                rc = 1
    finally:
        sys.argv, sys.path[:] = argv, path
        os.chdir(cwd)
        if env_ci is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = env_ci
        logf.flush()
    return rc


# -- the benchmark guide's generated section ------------------------------------------------------
GUIDE = ROOT / "docs" / "guides" / "benchmarks.md"
_BEGIN, _END = "<!-- begin: suites -->", "<!-- end: suites -->"


def suites_markdown(suites: Optional[Dict[str, Dict[str, Any]]] = None) -> str:
    """Every suite and entry of the suite file as Markdown: what runs, which results file and
    table it feeds, its budget (docs/guides/benchmarks.md holds it; ``--write-docs`` refreshes it)."""
    suites = suites if suites is not None else load_suites()
    out: List[str] = []
    for name, s in suites.items():
        budget = s.get("budget_s")
        out.append(f"#### `{name}`\n")
        out.append(" ".join((s.get("description") or "").split())
                   + (f" Budget of one invocation: {budget:.0f} s." if budget is not None else "") + "\n")
        out.append("| entry | runs | results (table) | budget s |")
        out.append("| --- | --- | --- | --- |")
        for e in s.get("entries") or []:
            if "config" in e:
                what = f"`{e['config'] or DEFAULT_CONFIG}`" + (f" `{' '.join(_flat(e.get('overrides')))}`"
                                                                if e.get("overrides") else "")
                if e.get("seeds"):
                    what += f", seeds {', '.join(map(str, e['seeds']))}"
            else:
                head = f"python -m {e['module']}" if e.get("module") else e["script"]
                what = f"`{' '.join([head] + [str(a) for a in e.get('args') or []])}`"
            res = f"`{e['results']}`" + (f" ({e['table']})" if e.get("table") else "") if e.get("results") else "-"
            out.append(f"| `{e['id']}` | {what.replace('|', '&#124;')} | {res} | {e.get('budget_s', '-')} |")
        out.append("")
    return "\n".join(out)


def write_docs(check: bool = False) -> bool:
    """Refresh (or, with ``check``, compare) the guide's generated section; True when current."""
    text = GUIDE.read_text()
    i, j = text.find(_BEGIN), text.find(_END)
    if i < 0 or j < 0:
        raise SuiteError(f"{GUIDE} has no '{_BEGIN}' ... '{_END}' section")
    new = text[: i + len(_BEGIN)] + "\n" + suites_markdown() + text[j:]
    if check:
        return new == text
    GUIDE.write_text(new)
    return True


# -- command line --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Run a named benchmark suite "
                                "(benchmarks/suites.yaml); resumable: done entries are skipped.")
    p.add_argument("suite", nargs="?", help="suite name (none: list the suites)")
    p.add_argument("--list", action="store_true", help="list the suite's entries and their state")
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    p.add_argument("--data-dir", help="folder with mnist/, fashion-mnist/, cifar-10-batches-py/ ...")
    p.add_argument("--out", help="where the result rows, the log and the status lines go "
                   "(default: rows into benchmarks/results/, log and status into the runs folder)")
    p.add_argument("--runs", help="folder for the training runs' directories (default runs/bench/)")
    p.add_argument("--budget", type=float, help="seconds this invocation may use (default: the suite's budget_s)")
    p.add_argument("--only", help="comma-separated entry ids")
    p.add_argument("--toy", action="store_true", help="toy sizes: a CPU check of the suite, seconds per entry")
    p.add_argument("--suites", help="suite file (default benchmarks/suites.yaml)")
    p.add_argument("--write-docs", action="store_true", help="refresh the suites section of docs/guides/benchmarks.md")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests: no start-up per entry
    p.add_argument("--merge", metavar="DIR", help="append the rows of DIR/*.jsonl missing from benchmarks/results/")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.write_docs:
            write_docs()
            print(GUIDE)
            return 0
        if a.merge:
            for name, n in merge(Path(a.merge)).items():
                print(f"{name}: {n} rows added")
            return 0
        suites = load_suites(Path(a.suites) if a.suites else None)
        if not a.suite:
            for name, s in suites.items():
                n = len(s.get("entries") or [])
                b = s.get("budget_s")
                desc = " ".join((s.get("description") or "").split())
                desc = desc if len(desc) <= 100 else desc[:97] + "..."
                print(f"{name:<24} {n:>2} entries{'' if b is None else f', budget {b:.0f} s'}  {desc}")
            return 0
        if a.suite not in suites:
            raise SuiteError(f"no suite {a.suite!r}; suites: {', '.join(suites)}")
        r = Runner(a.suite, suites[a.suite], Path(a.out) if a.out else None, a.data_dir,
                   Path(a.runs) if a.runs else None, a.budget, a.toy, a.only.split(",") if a.only else None,
                   in_process=a.in_process)
        if a.list or a.dry_run:
            plan = r.plan()
            used = 0.0
            for row in plan:
                note = ""
                if a.dry_run and row["state"] in ("pending", "partial", "always"):
                    if r.budget is not None and used + row["budget_s"] > r.budget:
                        note = "  -> would be skipped (budget)"
                    else:
                        used += row["budget_s"]
                        note = "  -> would run" + (" (resuming)" if row["state"] == "partial" else "")
                seed = "" if row["seed"] is None else f" seed {row['seed']}"
                print(f"{row['id'] + seed:<28} {row['state']:<8} {row['budget_s']:>6.0f} s  -> {row['results'] or '-'}"
                      f" ({row['table'] or 'no table'}){note}")
                if a.dry_run:
                    print(f"    $ {row['command']}")
            total = sum(x["budget_s"] for x in plan)
            print(f"total budget of the entries {total:.0f} s; this invocation's budget "
                  f"{'none' if r.budget is None else f'{r.budget:.0f} s'}")
            return 0
        return r.run()
    except SuiteError as e:
        print(f"benchmarks: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
