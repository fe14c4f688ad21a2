"""The run configuration: YAML sections mapped onto typed dataclasses.

```yaml
model:    {name: spiking_convnet, time_steps: 4}   # create_model(name, **rest)
rule:     {name: bptt}                             # create_rule(name, **rest)
data:     {name: mnist_embedded, batch_size: 128}  # create_dataset(name, **rest)
optim:    {name: adam, lr: 1.0e-3}                 # OptimConfig
schedule: {name: cosine, warmup_steps: 100}        # ScheduleConfig
train:    {epochs: 3, seed: 0}                     # TrainConfig
```

Every section rejects unknown keys with a message naming the valid ones; ``model``, ``rule``
and ``data`` are checked against the registered entry's own config class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import yaml

from ..config import ConfigError, from_dict, to_dict

__all__ = [
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "DEFAULT_CONFIG",
]

#: the config that ``bioprop train`` runs with no arguments (shipped inside the package)
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "default.yaml"


@dataclass
class OptimConfig:
    """``torch.optim`` optimizer. ``momentum``/``nesterov`` apply to SGD, ``betas`` to Adam(W)."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        _at_least("optim.lr", self.lr, 0.0)
        _at_least("optim.momentum", self.momentum, 0.0)
        _at_least("optim.weight_decay", self.weight_decay, 0.0)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must both be in [0, 1), got {list(self.betas)}")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, updated every iteration.

    ``step``: x ``gamma`` every ``step_size`` epochs; ``multistep``: x ``gamma`` at each epoch in
    ``milestones``; ``cosine``: cosine from ``lr`` to ``min_lr`` over the run; ``none``: constant.
    A linear warm-up over the first ``warmup_steps`` iterations multiplies any of them.
    """

    name: Literal["none", "step", "multistep", "cosine"] = "none"
    milestones: List[int] = field(default_factory=list)
    step_size: int = 30
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        _at_least("schedule.step_size", self.step_size, 1)
        _at_least("schedule.warmup_steps", self.warmup_steps, 0)
        _at_least("schedule.min_lr", self.min_lr, 0.0)


@dataclass
class TrainConfig:
    """Loop settings.

    ``device``: ``auto`` (CUDA if present), ``cpu``, ``cuda`` or ``cuda:N``. ``amp``: autocast
    dtype for the forward/backward (``bf16`` needs no loss scaling; ``fp16`` uses a GradScaler).
    ``grad_clip``: max global gradient norm. ``max_steps_per_epoch``: cut epochs short (smoke
    runs; the run is then labelled as shortened). ``out_dir``/``name``: the run directory
    ``out_dir/name`` (default name: the config file's stem). ``check_every``: read back the
    device-side NaN/Inf flags of the input, loss, gradients and weights every this many steps (and
    at every epoch end and before every checkpoint); a non-finite value stops the run naming the
    step and the tensor (:mod:`bioprop.nonfinite`); 0 turns the checks off.
    ``check_gradients``: when the gradients are flagged. ``step``: every step (an error names the
    exact step and layer). ``check``: only through the weights at each check (a NaN/Inf gradient
    makes the weight it updates non-finite, and that persists: the error names the layer and the
    check's step). ``auto`` (default): ``step`` on CUDA, where the flags of all gradients cost one
    asynchronous multi-tensor kernel; ``check`` on the CPU, where they cost a synchronous read of
    every gradient each step (4-6% of a small MLP's step; ``benchmarks/nonfinite_overhead.py``).
    ``tensorboard``: also write each epoch's metrics as TensorBoard scalars into
    ``RUN_DIR/tensorboard`` (the ``tensorboard`` extra).
    """

    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    grad_clip: Optional[float] = None
    label_smoothing: float = 0.0
    out_dir: str = "runs"
    name: Optional[str] = None
    checkpoint_every: int = 1
    keep_checkpoints: int = 2
    eval_every: int = 1
    max_steps_per_epoch: Optional[int] = None
    progress: Optional[bool] = None
    check_every: int = 50
    check_gradients: Literal["auto", "step", "check"] = "auto"

    #: under torchrun: synchronise BatchNorm layers across processes (nn.SyncBatchNorm; CUDA only)
    sync_bn: bool = False

    tensorboard: bool = False

    def __post_init__(self) -> None:
        _at_least("train.epochs", self.epochs, 1, "to train nothing, do not run it; to evaluate, use bioprop eval")
        _at_least("train.checkpoint_every", self.checkpoint_every, 1)
        _at_least("train.eval_every", self.eval_every, 1)
        _at_least("train.keep_checkpoints", self.keep_checkpoints, 0)
        _at_least("train.check_every", self.check_every, 0)
        _at_least("train.label_smoothing", self.label_smoothing, 0.0)
        if self.label_smoothing >= 1:
            raise ConfigError(f"train.label_smoothing must be below 1, got {self.label_smoothing}")
        if self.max_steps_per_epoch is not None:
            _at_least("train.max_steps_per_epoch", self.max_steps_per_epoch, 1, "or null for whole epochs")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"train.grad_clip must be > 0 (or null for no clipping), got {self.grad_clip}")


def _at_least(key: str, value: Any, low: Any, extra: str = "") -> None:
    if not value >= low:  # also refuses NaN
        raise ConfigError(f"{key} must be >= {low}, got {value}" + (f" ({extra})" if extra else ""))


@dataclass
class RunConfig:
    model: Dict[str, Any] = field(default_factory=lambda: {"name": "mlp"})
    rule: Dict[str, Any] = field(default_factory=lambda: {"name": "bp"})
    data: Dict[str, Any] = field(default_factory=lambda: {"name": "mnist_embedded"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for section in ("model", "rule", "data"):
            d = getattr(self, section)
            if not isinstance(d, Mapping) or not isinstance(d.get("name"), str):
                raise ConfigError(f"section {section!r} needs a 'name' (e.g. {section}: {{name: ...}}), got {d!r}")
            setattr(self, section, dict(d))
        self.validate()

    def validate(self) -> None:
        """Check the model/rule/data sections against their registered config classes."""
        from ..data import DATASETS
        from ..models import MODELS
        from ..rules import RULES

        for section, reg in (("model", MODELS), ("rule", RULES), ("data", DATASETS)):
            d = dict(getattr(self, section))
            name = d.pop("name")
            reg.make_config(name, **d)

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        return from_dict(cls, d)


def _parse_value(text: str) -> Any:
    """A YAML scalar/list, with numbers like ``1e-3`` (a string to YAML 1.1) read as floats."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping.

    ``section=NAME`` (for ``model``, ``rule``, ``data``) switches to another registered entry and
    drops the section's other keys (``rule=sa``).
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, text = item.split("=", 1)
        value = _parse_value(text)
        parts = key.strip().split(".")
        if len(parts) == 1:
            if parts[0] in ("model", "rule", "data") and isinstance(value, str):
                out[parts[0]] = {"name": value}
                continue
            raise ConfigError(f"override {item!r}: expected section.key=value (sections: {', '.join(RunConfig.__dataclass_fields__)})")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return out


def load_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config (default: the packaged default), apply overrides, validate."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    cfg = RunConfig.from_dict(raw)
    if cfg.train.name is None:
        cfg.train.name = p.stem
    return cfg
