"""``bioprop``: command-line interface.

    bioprop train [--config FILE] [--resume [RUN]] [--data-dir DIR] [section.key=value ...]
    bioprop eval CHECKPOINT [--split test|val|train] [--device DEV] [--data-dir DIR]
    bioprop list [--markdown]
    bioprop bench SUITE [--list] [--dry-run] [...]   (a source checkout's benchmarks/suites.yaml)
    bioprop plot RUN_DIR [RUN_DIR ...] [--out FIG.png]

``bioprop train`` with no arguments trains the packaged default config on the embedded data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

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


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import Trainer, load_config

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    config = load_config(args.config, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False), end="")
        return 0
    resume = False if args.resume is None else (True if args.resume == "" else args.resume)
    trainer = Trainer(config, resume=resume)
    result = trainer.fit()
    summary = {k: result[k] for k in ("epoch", "train_acc", "val_acc", "test_acc", "run_dir") if k in result}
    print(json.dumps(summary))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate_checkpoint

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    res = evaluate_checkpoint(args.checkpoint, split=args.split, device=args.device or "auto",
                              overrides=overrides)
    print(f"{args.split} accuracy {100 * res['acc']:.2f}% (loss {res['loss']:.4f}) of {res['checkpoint']}")
    print(json.dumps(res))
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bioprop", description="Train networks with credit-assignment rules "
                                "other than exact backprop, spiking and not.")
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a model (no arguments: the packaged default on embedded MNIST)")
    t.add_argument("--config", "-c", help="YAML run config (default: the packaged default.yaml)")
    t.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                   help="continue from the last checkpoint of RUN (a run dir or checkpoint); "
                        "without a value, of this config's run dir")
    t.add_argument("--data-dir", help="directory holding the datasets (default: $BIOPROP_DATA)")
    t.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("overrides", nargs="*", help="section.key=value (e.g. train.epochs=3 rule=bptt)")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("checkpoint", help="run directory or checkpoints/epoch_NNNN directory")
    e.add_argument("--split", default="test", choices=["test", "val", "train"])
    e.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    e.add_argument("--data-dir", help="directory holding the datasets")
    e.add_argument("overrides", nargs="*", help="section.key=value applied to the stored config")
    e.set_defaults(fn=_cmd_eval)

    ls = sub.add_parser("list", help="list models, rules and datasets")
    ls.add_argument("--markdown", action="store_true", help="as the README's Markdown tables")
    ls.add_argument("--verbose", "-v", action="store_true", help="with config fields and defaults")
    ls.set_defaults(fn=_cmd_list)

    _add_bench_and_plot(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"bioprop: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        if os.environ.get("BIOPROP_DEBUG"):
            raise
        print(f"bioprop: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
