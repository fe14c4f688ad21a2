"""``bioprop``: command-line interface.

    bioprop train [--config FILE] [--resume [RUN]] [--data-dir DIR] [section.key=value ...]
    bioprop eval CHECKPOINT [--split test|val|train] [--device DEV] [--data-dir DIR]
    bioprop list [--markdown]
    bioprop meta --config FILE [--resume] [--data-dir DIR] [--run-dir DIR] [--plot] [section.key=value ...]

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


def _cmd_meta(args: argparse.Namespace) -> int:
    """Meta-learn a plasticity rule (:mod:`bioprop.meta`)."""
    from .meta import MetaLearner, load_meta_config

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"pool.data_dir={args.data_dir}")
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    config = load_meta_config(args.config, overrides)
    learner = MetaLearner(config, resume=args.resume)
    result = learner.fit()
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
