"""``bioprop``: command-line interface.

    bioprop train [--config FILE] [--resume [RUN]] [--data-dir DIR] [section.key=value ...]
    bioprop eval CHECKPOINT [--split test|val|train] [--device DEV] [--data-dir DIR]
    bioprop export RUN_DIR --format nir OUT.nir
    bioprop list [--markdown]
    bioprop bench SUITE [--list] [--dry-run] [...]   (a source checkout's benchmarks/suites.yaml)
    bioprop plot RUN_DIR [RUN_DIR ...] [--out FIG.png]
    bioprop meta --config FILE [--resume] [--data-dir DIR] [--run-dir DIR] [--plot] [section.key=value ...]
    torchrun --nproc_per_node=N -m bioprop meta ... meta.meta_batch=M   (episodes of a meta-step shared)

``bioprop train`` with no arguments trains the packaged default config on the embedded data.

Errors are one line on stderr (``--debug`` or ``BIOPROP_DEBUG=1`` shows the traceback), with an
exit code per kind (:data:`EXIT_CODES`): 2 config or usage, 3 data, 4 checkpoint, 5 NaN/Inf in
the run, 6 a fixed-point solve missed its tolerance under ``strict``, 7 a rule that does not fit
the model, 1 anything else (a bug: please report it with the ``--debug`` traceback), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from .config import ConfigError, describe_fields

__all__ = ["main", "list_markdown"]


def _registries():
    from .data import DATASETS
    from .models import MODELS
    from .rules import RULES

    return [("models", MODELS), ("rules", RULES), ("datasets", DATASETS)]


def list_markdown() -> str:
    """The README's list of models, rules and datasets (``bioprop list --markdown``)."""
    lines: List[str] = []
    for title, reg in _registries():
        lines.append(f"**{title.capitalize()}**\n")
        lines.append("| name | what | config (defaults) |")
        lines.append("| --- | --- | --- |")
        for name in reg.names():
            fields = describe_fields(reg.config_class(name)) or "-"
            lines.append(f"| `{name}` | {reg.help(name)} | <sub>{fields}</sub> |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _cmd_list(args: argparse.Namespace) -> int:
    if args.markdown:
        print(list_markdown(), end="")
        return 0
    for title, reg in _registries():
        print(f"{title}:")
        for name in reg.names():
            print(f"  {name:<18} {reg.help(name)}")
            if args.verbose:
                print(f"  {'':<18} {describe_fields(reg.config_class(name))}")
    return 0


def _check_data_dir(d: str) -> None:
    from .data import DataError

    if not Path(d).expanduser().is_dir():
        raise DataError(f"--data-dir {d}: no such directory; pass the directory that holds the datasets")


def _split_resume(resume: Optional[str], overrides: List[str]) -> Tuple[Optional[str], List[str]]:
    """``--resume train.epochs=4`` means ``--resume`` and the override ``train.epochs=4`` (unless a
    path of that name exists)."""
    if resume and "=" in resume and not Path(resume).exists():
        return "", [resume, *overrides]
    return resume, overrides


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import Trainer, load_config
    from .train.checkpoint import NoCheckpointError, latest_checkpoint, load_checkpoint
    from .train.config import RunConfig, apply_overrides
    from .train.trainer import newest_run

    resume_arg, overrides = _split_resume(args.resume, list(args.overrides))
    if args.data_dir:
        _check_data_dir(args.data_dir)
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if resume_arg is not None and args.config is None:
        if resume_arg == "":  # the most recently checkpointed run of the default config's name
            where = load_config(None, [o for o in overrides if o.split("=", 1)[0] in ("train.out_dir", "train.name")])
            base = Path(where.train.out_dir) / (where.train.name or "run")
            run, others = newest_run(base)
            if run is None:
                raise NoCheckpointError(f"--resume: no checkpoint found in {base} (nor in {base.name}-N); start "
                                        "without --resume, or pass --resume RUN")
            if others:
                print(f"bioprop: --resume: resuming {run}, the most recently checkpointed of "
                      f"{', '.join(str(p) for p in [run, *others])}; pass --resume DIR to choose", file=sys.stderr)
            resume_arg = str(run)
        # resume RUN: its own stored config, with the overrides (checked against it by the Trainer)
        ckpt = latest_checkpoint(resume_arg)
        if ckpt is None:
            raise NoCheckpointError(f"--resume {resume_arg}: no checkpoint found there (expected a run "
                                    "directory or a checkpoints/epoch_NNNN directory)")
        config = RunConfig.from_dict(apply_overrides(load_checkpoint(ckpt)["config"], overrides))
    else:
        config = load_config(args.config, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False), end="")
        return 0
    resume = False if resume_arg is None else (True if resume_arg == "" else resume_arg)
    trainer = Trainer(config, resume=resume)
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        ckpt = None
        try:
            ckpt = latest_checkpoint(trainer.run_dir)
        except Exception:
            pass
        where = (f"the last checkpoint is {ckpt} (after epoch {int(ckpt.name.rsplit('_', 1)[-1])}); continue "
                 f"with: bioprop train --resume {trainer.run_dir}") if ckpt else "no checkpoint was written yet"
        print(f"bioprop: interrupted; {where}", file=sys.stderr)
        return 130
    summary = {k: result[k] for k in ("epoch", "train_acc", "val_acc", "test_acc", "run_dir") if k in result}
    from .distributed import is_main

    if is_main():  # under torchrun, rank 0 alone reports
        print(json.dumps(summary))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate_checkpoint

    overrides = list(args.overrides)
    if args.data_dir:
        _check_data_dir(args.data_dir)
        overrides.append(f"data.data_dir={args.data_dir}")
    res = evaluate_checkpoint(args.checkpoint, split=args.split, device=args.device or "auto",
                              overrides=overrides)
    print(f"{args.split} accuracy {100 * res['acc']:.2f}% (loss {res['loss']:.4f}) of {res['checkpoint']}")
    print(json.dumps(res))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        from .export import export_run
        import nir  # noqa: F401
    except ImportError:
        print("bioprop: error: NIR export needs the 'nir' package: pip install 'bioprop[nir]'", file=sys.stderr)
        return 2
    path = export_run(args.run, args.out, format=args.format, dt=args.dt,
                      dense_limit=None if args.dense_limit == 0 else args.dense_limit)
    print(f"wrote {path} ({args.format}) from {args.run}")
    return 0


# -- bench and plot (self-contained: their parsers are added by _add_bench_and_plot) ---------------
def _find_checkout() -> Optional["Path"]:
    """The source checkout holding ``benchmarks/suites.yaml``: the working directory or a parent,
    else the checkout this package was installed from (editable installs)."""
    from pathlib import Path

    here = Path.cwd().resolve()
    for d in [here, *here.parents, Path(__file__).resolve().parents[2]]:
        if (d / "benchmarks" / "suites.yaml").is_file() and (d / "benchmarks" / "runner.py").is_file():
            return d
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    root = _find_checkout()
    if root is None:
        raise FileNotFoundError("bioprop bench runs the suites of a source checkout (benchmarks/suites.yaml "
                                "not found here or above): cd into the bioprop repository")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    rest = list(args.bench_args)
    passthrough = [a for a in rest if a != "--"]
    cmd = [sys.executable, "-m", "benchmarks"] + ([args.suite] if args.suite else []) + passthrough
    cmd += ["--list"] if args.list else []
    cmd += ["--dry-run"] if args.dry_run else []
    return subprocess.call(cmd, cwd=root, env=env)


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import MissingMatplotlib, plot_runs

    try:
        out = plot_runs(args.runs, out=args.out, prefix=args.prefix, title=args.title)
    except MissingMatplotlib as e:
        print(f"bioprop: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _add_bench_and_plot(sub) -> None:
    b = sub.add_parser("bench", help="run a benchmark suite of benchmarks/suites.yaml (source checkout)",
                       description="Run a named benchmark suite (python -m benchmarks SUITE); other options "
                                   "(--data-dir, --out, --budget, --only, --toy) are passed on.")
    b.add_argument("suite", nargs="?", help="suite name (none: list the suites)")
    b.add_argument("--list", action="store_true", help="list the suite's entries and which are done")
    b.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="more options for python -m benchmarks")
    b.set_defaults(fn=_cmd_bench)

    pl = sub.add_parser("plot", help="plot runs' metrics.jsonl (loss, accuracy, rates, solver, angles) as a PNG")
    pl.add_argument("runs", nargs="+", help="run directories (or folders of runs)")
    pl.add_argument("--out", "-o", default="metrics.png", help="PNG file (default metrics.png)")
    pl.add_argument("--prefix", help="plot every column starting with this instead (e.g. train/align/)")
    pl.add_argument("--title", help="figure title (say the data, device and schedule)")
    pl.set_defaults(fn=_cmd_plot)


def _cmd_meta(args: argparse.Namespace) -> int:
    """Meta-learn a plasticity rule (:mod:`bioprop.meta`)."""
    from .meta import MetaLearner, load_meta_config

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"pool.data_dir={args.data_dir}")
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    config = load_meta_config(args.config, overrides)
    from .distributed import is_main

    learner = MetaLearner(config, resume=args.resume)  # under torchrun: joins the group, shares episodes
    result = learner.fit()
    if not is_main():  # under torchrun, rank 0 alone reports
        return 0
    if args.plot and learner.run_dir is not None and learner.episode > 0:
        from .meta.plot import plot_run

        result["plot"] = str(plot_run(learner.run_dir))
    summary = {"episodes": result["episodes"], "theta": result["theta"], "heldout_acc": result["heldout"]["acc"],
               "train_classes_acc": result["train_classes"]["acc"], "run_dir": str(learner.run_dir)}
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bioprop", description="Train networks with credit-assignment rules "
                                "other than exact backprop, spiking and not.")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error (also: BIOPROP_DEBUG=1)")
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a model (no arguments: the packaged default on embedded MNIST)")
    t.add_argument("--config", "-c", help="YAML run config (default: the packaged default.yaml)")
    t.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                   help="continue from the last checkpoint of RUN (a run dir or checkpoint), with the "
                        "config stored in it; without a value, the most recently checkpointed run of "
                        "this config's name (NAME or NAME-N)")
    t.add_argument("--data-dir", help="directory holding the datasets (default: $BIOPROP_DATA)")
    t.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("overrides", nargs="*", help="section.key=value (e.g. train.epochs=3 rule=bptt)")
    t.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("checkpoint", help="run directory or checkpoints/epoch_NNNN directory")
    e.add_argument("--split", default="test", choices=["test", "val", "train"])
    e.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    e.add_argument("--data-dir", help="directory holding the datasets")
    e.add_argument("overrides", nargs="*", help="section.key=value applied to the stored config")
    e.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    e.set_defaults(fn=_cmd_eval)

    x = sub.add_parser("export", help="export a trained spiking model (NIR; needs bioprop[nir])")
    x.add_argument("run", help="run directory or checkpoints/epoch_NNNN directory")
    x.add_argument("out", help="output file, e.g. model.nir")
    x.add_argument("--format", default="nir", choices=["nir"])
    x.add_argument("--dt", type=float, default=1e-4, help="time step the NIR neuron constants are written for")
    x.add_argument("--dense-limit", type=int, default=1 << 26,
                   help="most weights of a dense layer standing for a transposed convolution (0: no limit)")
    x.set_defaults(fn=_cmd_export)
    m = sub.add_parser("meta", help="meta-learn a plasticity rule (configs/meta_plasticity_*.yaml)")
    m.add_argument("--config", "-c", required=True, help="YAML meta config (pool, plasticity, meta)")
    m.add_argument("--resume", action="store_true", help="continue from the run dir's last checkpoint")
    m.add_argument("--data-dir", help="directory holding the pool's datasets (default: $BIOPROP_DATA)")
    m.add_argument("--run-dir", help="where metrics, checkpoints and result.json go (default: the config's)")
    m.add_argument("--plot", action="store_true", help="write RUN_DIR/meta.png (needs matplotlib)")
    m.add_argument("overrides", nargs="*", help="section.key=value (e.g. meta.episodes=100 plasticity.feedback=sym)")
    m.set_defaults(fn=_cmd_meta)

    ls = sub.add_parser("list", help="list models, rules and datasets")
    ls.add_argument("--markdown", action="store_true", help="as the README's Markdown tables")
    ls.add_argument("--verbose", "-v", action="store_true", help="with config fields and defaults")
    ls.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ls.set_defaults(fn=_cmd_list)

    _add_bench_and_plot(sub)
    return p


#: exit code of each kind of error (see the module docstring)
EXIT_CODES = {"config": 2, "data": 3, "checkpoint": 4, "nonfinite": 5, "solver": 6, "protocol": 7,
              "internal": 1, "interrupted": 130}


def _classify(e: BaseException) -> Tuple[str, str]:
    """``(kind, label)`` of an exception raised by a command."""
    from .data import DataError
    from .equilibrium import SolverError
    from .models.protocols import ProtocolError
    from .nonfinite import NonFiniteError
    from .train.checkpoint import CheckpointError

    if isinstance(e, ConfigError):
        return "config", "config error"
    if isinstance(e, CheckpointError):
        return "checkpoint", "checkpoint error"
    if isinstance(e, DataError):
        return "data", "data error"
    if isinstance(e, (NonFiniteError, FloatingPointError)):
        return "nonfinite", "non-finite values"
    if isinstance(e, SolverError):
        return "solver", "solver error"
    if isinstance(e, ProtocolError):
        return "protocol", "rule and model do not fit"
    if isinstance(e, (FileNotFoundError, ValueError)):
        return "config", "error"
    return "internal", "internal error"


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    # section.key=value overrides after an option flag arrive here: they are overrides all the same
    if unknown:
        bad = [u for u in unknown if u.startswith("-") or "=" not in u or not hasattr(args, "overrides")]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = list(args.overrides) + unknown
    if args.command is None:
        parser.print_help()
        return 0
    debug = bool(getattr(args, "debug", False)) or os.environ.get("BIOPROP_DEBUG", "") not in ("", "0")
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("bioprop: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except Exception as e:
        if debug:
            raise
        kind, label = _classify(e)
        msg = " ".join(str(e).split()) or type(e).__name__
        if kind == "internal":
            msg = (f"{type(e).__name__}: {msg} (this looks like a bug in bioprop: rerun with --debug for the "
                   "traceback and report it)")
        print(f"bioprop: {label}: {msg}", file=sys.stderr)
        return EXIT_CODES[kind]


if __name__ == "__main__":
    sys.exit(main())
