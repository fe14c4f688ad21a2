"""``bioprop``: command-line interface.

    bioprop train [--config FILE] [--resume [RUN]] [--data-dir DIR] [section.key=value ...]
    bioprop eval CHECKPOINT [--split test|val|train] [--device DEV] [--data-dir DIR]
    bioprop export RUN_DIR --format nir OUT.nir
    bioprop list [--markdown]

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
    from .distributed import is_main

    if is_main():  # under torchrun, rank 0 alone reports
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

    x = sub.add_parser("export", help="export a trained spiking model (NIR; needs bioprop[nir])")
    x.add_argument("run", help="run directory or checkpoints/epoch_NNNN directory")
    x.add_argument("out", help="output file, e.g. model.nir")
    x.add_argument("--format", default="nir", choices=["nir"])
    x.add_argument("--dt", type=float, default=1e-4, help="time step the NIR neuron constants are written for")
    x.add_argument("--dense-limit", type=int, default=1 << 26,
                   help="most weights of a dense layer standing for a transposed convolution (0: no limit)")
    x.set_defaults(fn=_cmd_export)

    ls = sub.add_parser("list", help="list models, rules and datasets")
    ls.add_argument("--markdown", action="store_true", help="as the README's Markdown tables")
    ls.add_argument("--verbose", "-v", action="store_true", help="with config fields and defaults")
    ls.set_defaults(fn=_cmd_list)
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
