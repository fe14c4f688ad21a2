"""The training loop: the same for every rule, since every rule only fills ``.grad``.

Per epoch: train over the shuffled (and augmented) training split, calling ``rule.step`` then
``optimizer.step`` then ``rule.after_step``; evaluate on the validation split (if carved) and
the test split; append one line of metrics to ``metrics.jsonl`` and ``metrics.csv``; write an
atomic checkpoint. ``resume`` continues a killed run from its last checkpoint with nothing lost:
data order and augmentation are seeded by ``(seed, epoch)``, and all RNG, optimizer, scheduler
and rule states are restored, so a resumed run ends bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..nonfinite import FiniteMonitor, NonFiniteError
from ..data import create_dataset
from ..models import count_parameters, create_model
from ..rules import create_rule
from ..rules.base import Rule
from .checkpoint import (
    CheckpointError,
    NoCheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    remove_partial,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from . import parallel
from .config import RunConfig, ScheduleConfig
from .. import distributed as dist_

__all__ = ["Trainer", "resolve_device", "build_optimizer", "build_scheduler", "evaluate", "environment",
           "claim_run_dir", "newest_run", "run_dir_of", "resume_changes", "RESUME_ALLOWED"]

#: the file whose exclusive creation claims a run directory for one run
CLAIM_FILE = ".bioprop-run"

#: keys a resumed run may change: they do not change what is computed (``train.epochs`` only
#: extends or shortens the run, and is refused under the ``cosine`` schedule, a function of it).
#: Every change is logged and recorded in the run's ``resumes.jsonl``; any other difference is
#: refused, so that ``config.yaml`` always describes what ran.
RESUME_ALLOWED = ("train.device", "train.progress", "train.eval_every", "train.checkpoint_every",
                  "train.keep_checkpoints", "train.check_every", "train.check_gradients", "train.epochs",
                  "data.data_dir", "data.download")
#: keys that only name where the run lives (not compared)
_RESUME_IGNORED = ("train.out_dir", "train.name")


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and prefix == "":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def resume_changes(stored: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, tuple]:
    """The keys whose value differs between a run's ``stored`` config and the ``new`` one, as
    ``{key: (old, new)}``; a :class:`ConfigError` listing them if any is not in
    :data:`RESUME_ALLOWED` (or is ``train.epochs`` under a cosine schedule)."""
    a, b = _flatten(stored), _flatten(new)
    changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
               if k not in _RESUME_IGNORED and a.get(k) != b.get(k)}
    cosine = b.get("schedule.name") == "cosine"
    refused = [k for k in changed if k not in RESUME_ALLOWED or (k == "train.epochs" and cosine)]
    if refused:
        why = " (the cosine schedule is a function of train.epochs)" if "train.epochs" in refused and cosine else ""
        raise ConfigError(
            "--resume: the config differs from the run's stored config in "
            + ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in refused) + why
            + "; a resumed run keeps the config it started with: drop these overrides, or start a new run. "
            f"Allowed on resume: {', '.join(RESUME_ALLOWED)}")
    return changed


def run_dir_of(path: Union[str, Path]) -> Path:
    """The run directory of a run directory, its ``checkpoints`` folder or one checkpoint."""
    ck = Path(path)
    # .../run/checkpoints/epoch_0003 -> .../run ; .../run/checkpoints -> .../run ; .../run -> .../run
    if (ck / "model.safetensors").is_file() or ck.parent.name == "checkpoints":
        return ck.parent.parent
    return ck.parent if ck.name == "checkpoints" else ck


def newest_run(base: Path):
    """Among ``base`` and ``base-N`` that hold a checkpoint: the most recently checkpointed, and
    the others (newest first)."""
    n = len(base.name) + 1
    cands = [base] + sorted((p for p in base.parent.glob(f"{base.name}-*") if p.name[n:].isdigit()),
                            key=lambda p: int(p.name[n:]))
    have = [p for p in cands if (p / "checkpoints" / "latest").is_file()]
    if not have:
        return None, []
    have.sort(key=lambda p: (p / "checkpoints" / "latest").stat().st_mtime_ns)
    return have[-1], have[:-1][::-1]


def claim_run_dir(base: Path) -> Path:
    """Claim ``base``, else the first free ``base-N``, for this run alone. A directory that holds
    anything is taken; the claim is the exclusive creation (``O_EXCL``) of :data:`CLAIM_FILE` in
    it, so two runs started at the same moment never share a directory."""
    base.parent.mkdir(parents=True, exist_ok=True)
    i = 0
    while True:
        path = base if i == 0 else base.with_name(f"{base.name}-{i}")
        i += 1
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir() or any(path.iterdir()):
                continue
        try:
            fd = os.open(path / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"pid {os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        return path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available; use train.device=cpu")
    return dev


def build_optimizer(params, c, no_weight_decay=()) -> torch.optim.Optimizer:
    """The optimizer of ``c`` over the trainable ``params``; those in ``no_weight_decay`` (e.g. a
    rule's backward kernels that its own regulariser already decays) form a group without decay."""
    params = [p for p in params if p.requires_grad]
    skip = {id(p) for p in no_weight_decay}
    groups = [{"params": [p for p in params if id(p) not in skip]}]
    if skip:
        groups.append({"params": [p for p in params if id(p) in skip], "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    if c.name == "sgd":
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                               weight_decay=c.weight_decay)
    if c.name == "adam":
        return torch.optim.Adam(groups, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)
    return torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay)


def lr_factor(c: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int, base_lr: float) -> float:
    """Multiplier of the base LR at iteration ``step`` (0-based)."""
    epoch = step / max(1, steps_per_epoch)
    if c.name == "none":
        f = 1.0
    elif c.name == "step":
        f = c.gamma ** int(epoch // max(1, c.step_size))
    elif c.name == "multistep":
        f = c.gamma ** sum(1 for m in c.milestones if int(epoch) >= m)
    else:  # cosine
        total = max(1, steps_per_epoch * epochs)
        floor = c.min_lr / base_lr if base_lr > 0 else 0.0
        f = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    if c.warmup_steps > 0 and step < c.warmup_steps:
        f *= (step + 1) / c.warmup_steps
    return f


def build_scheduler(opt, c: ScheduleConfig, steps_per_epoch: int, epochs: int):
    base = opt.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(c, step, steps_per_epoch, epochs, base))


@torch.no_grad()
def evaluate(model: nn.Module, rule: Rule, loader, loss_fn: Callable, amp_ctx=None) -> Dict[str, float]:
    """Mean loss and top-1 accuracy of ``rule.predict`` over ``loader``."""
    was_training = model.training
    model.eval()
    total, correct, loss_sum = 0, torch.zeros((), dtype=torch.long), torch.zeros(())
    for x, y in loader:
        with amp_ctx() if amp_ctx else _null():
            logits = rule.predict(model, x)
        loss_sum = loss_sum.to(logits.device) + loss_fn(logits.float(), y) * y.shape[0]
        correct = correct.to(logits.device) + (logits.argmax(1) == y).sum()
        total += y.shape[0]
    model.train(was_training)
    return {"loss": float(loss_sum) / max(1, total), "acc": float(correct) / max(1, total)}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _git_commit() -> Optional[str]:
    """The checkout's commit, or ``$BIOPROP_COMMIT`` where the tree travels without ``.git``."""
    if os.environ.get("BIOPROP_COMMIT"):
        return os.environ["BIOPROP_COMMIT"]
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except Exception:
        return None


def environment(device: torch.device) -> Dict[str, Any]:
    """What a result must record: device name, torch version, commit, date."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    return {"device": name, "torch": str(torch.__version__), "commit": _git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0]}


def build_run(config: RunConfig, device: torch.device, rule_seed: Optional[int] = None):
    """Dataset, model (on ``device``, prepared by the rule) and rule of a run config."""

    def make(factory, section):
        kw = dict(section)
        return factory(kw.pop("name"), **kw)

    dataset = make(create_dataset, config.data)
    model = make(create_model, config.model).to(device)
    steps = getattr(model, "time_steps", None)
    if dataset.timed and steps is not None and steps != dataset.train_x.shape[1]:
        # a spike-train input brings its own T, which the model uses: refuse a T it would ignore
        raise ConfigError(f"model.time_steps={steps}, but {config.data['name']} gives spike trains of "
                          f"T={dataset.train_x.shape[1]} frames (data.time_steps), which the model "
                          f"simulates instead: set model.time_steps={dataset.train_x.shape[1]} (or "
                          f"data.time_steps={steps})")
    rule = make(create_rule, config.rule)
    if rule_seed is not None:
        rule.seed(rule_seed)
    return dataset, rule.prepare(model), rule


_HINT_DATA = "the dataset yields NaN/Inf: clean the data (e.g. torch.nan_to_num) before training"
_HINT_LR = "lower optim.lr, set train.grad_clip, or check the data"


class Trainer:
    """Train ``config.model`` with ``config.rule`` on ``config.data``.

    >>> from bioprop.train import Trainer, load_config
    >>> trainer = Trainer(load_config(None, ["train.epochs=1"]))   # the packaged default
    >>> result = trainer.fit()                                        # doctest: +SKIP
    """

    def __init__(self, config: Union[RunConfig, Dict[str, Any]], run_dir: Optional[Union[str, Path]] = None,
                 resume: Union[bool, str, Path] = False, log: Callable[[str], None] = print):
        self.config = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
        c = self.config
        self.device = parallel.setup_device(c.train.device, resolve_device)  # torchrun: joins the group
        self.log = log if dist_.is_main() else (lambda *a, **k: None)
        # rank 0 alone claims (or picks) the run directory; the others take its choice
        self.run_dir = dist_.broadcast_object(self._run_dir(run_dir, resume) if dist_.is_main() else None)
        self._seed_everything(c.train.seed)

        self.dataset, self.model, self.rule = build_run(c, self.device, rule_seed=c.train.seed + 1)
        self.model = parallel.prepare_model(self.model, c.train.sync_bn, self.device)  # distributed
        parallel.seed_rank(c.train.seed)  # distributed: ranks > 0 draw their own dropout masks

        self.steps_per_epoch = len(self.dataset.loader("train", self.device, seed=c.train.seed, epoch=0))
        if c.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, c.train.max_steps_per_epoch)
        own = {id(p) for p in self.rule.own_parameters(self.model)}
        self.optimizer = build_optimizer([p for p in self.model.parameters() if id(p) not in own], c.optim,
                                         self.rule.no_weight_decay(self.model))
        self.scheduler = build_scheduler(self.optimizer, c.schedule, self.steps_per_epoch, c.train.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type) if c.train.amp == "fp16" else None
        self.loss_fn = lambda logits, y: F.cross_entropy(logits, y, label_smoothing=c.train.label_smoothing)
        self.epoch = 0
        self.global_step = 0
        self.history: List[Dict[str, Any]] = []
        self.env = environment(self.device)
        self.monitor = FiniteMonitor(enabled=c.train.check_every > 0)
        self._named_params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self._own_params = [(n, p) for n, p in self.model.named_parameters() if id(p) in own]

        ckpt = None
        if resume:
            ckpt = latest_checkpoint(resume if isinstance(resume, (str, Path)) else self.run_dir)
            if ckpt is None:
                raise NoCheckpointError(
                    f"--resume: no checkpoint found in {self.run_dir}; start without --resume")
            removed = remove_partial(ckpt.parent)
            if removed:
                self.log(f"removed {len(removed)} partial checkpoint write(s) left by a killed run: "
                         + ", ".join(p.name for p in removed))
            self._restore(ckpt)
        if dist_.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(_yaml(self.config.to_dict()))
        if ckpt is not None:
            self.log(f"resumed from {ckpt} (epoch {self.epoch}, step {self.global_step})")

    # -- setup ------------------------------------------------------------------------------
    def _run_dir(self, run_dir, resume) -> Path:
        c = self.config.train
        if run_dir is not None:
            return Path(run_dir)
        if isinstance(resume, (str, Path)):
            return run_dir_of(resume)
        base = Path(c.out_dir) / (c.name or "run")
        if resume:
            chosen, others = newest_run(base)
            if chosen is None:
                raise NoCheckpointError(f"--resume: no checkpoint found in {base} (nor in {base.name}-N); "
                                      "start without --resume")
            if others:
                self.log(f"--resume: resuming {chosen}, the most recently checkpointed of "
                         f"{', '.join(str(p) for p in [chosen, *others])}; pass --resume DIR to choose")
            return chosen
        return claim_run_dir(base)

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _restore(self, ckpt: Path) -> None:
        state = load_checkpoint(ckpt)
        changed = resume_changes(state["config"], self.config.to_dict())
        try:
            load_weights(self.model, ckpt)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; the checkpoint was written by another model config: resume it "
                                  "with its own config (bioprop train --resume RUN, without --config)") from None
        if changed:
            self.log("resume: applying the allowed change(s) " + ", ".join(
                f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
                + f" (recorded in {self.run_dir / 'resumes.jsonl'})")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "resumes.jsonl", "a") as f:
            f.write(json.dumps({"epoch": state["epoch"], "checkpoint": ckpt.name,
                                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                "changed": {k: list(v) for k, v in changed.items()}}) + "\n")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.rule.load_state_dict(state["rule"])
        parallel.restore_rank_rng(state, set_rng_state)  # this rank's generators (same N only)
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.history = state["history"]

    def _state(self) -> Dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rule": self.rule.state_dict(),
            "rng": rng_state(),
            "rng_ranks": parallel.rank_rng_states(rng_state),  # distributed: every rank's (collective)
            "epoch": self.epoch,
            "global_step": self.global_step,
            "history": self.history,
            "config": self.config.to_dict(),
            "env": self.env,
        }

    def _amp(self):
        amp = self.config.train.amp
        if amp == "none":
            return None
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return lambda: torch.autocast(self.device.type, dtype=dtype)

    def _progress(self) -> bool:
        p = self.config.train.progress
        if not dist_.is_main():
            return False
        if p is not None:
            return p
        return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("true", "1")

    # -- loop -------------------------------------------------------------------------------
    def train_epoch(self) -> Dict[str, Any]:
        c = self.config
        model, rule, opt = self.model, self.rule, self.optimizer
        model.train()
        loader = self.dataset.loader("train", self.device, seed=c.train.seed, epoch=self.epoch)
        amp = self._amp()
        n_steps = self.steps_per_epoch
        sums: Dict[str, torch.Tensor] = {}
        counts: Dict[str, int] = {}
        seen, correct = 0, torch.zeros((), dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        bar = None
        if self._progress():
            from tqdm import tqdm

            bar = tqdm(total=n_steps, desc=f"epoch {self.epoch + 1}/{c.train.epochs}", leave=False,
                       dynamic_ncols=True)
        t0 = time.perf_counter()
        mon = self.monitor
        every = c.train.check_every
        finite_inputs = getattr(loader, "finite_inputs", False)
        for i, (x, y) in enumerate(loader):
            if i >= n_steps:
                break
            x, y, b_local, b_global = parallel.shard_batch(x, y, getattr(loader, "time_first", False))
            mon.where = f"epoch {self.epoch + 1}, step {i + 1} (global step {self.global_step + 1})"
            at = len(mon)  # the input's flag goes before what the rule watches during the step
            opt.zero_grad(set_to_none=True)
            with mon.active(), (amp() if amp else _null()):
                out = rule.step(model, x, y, self.loss_fn, self.scaler)
            parallel.reduce_step_grads(model.parameters(), b_local, b_global, rule.grad_reduction)  # distributed
            # one call: input, loss and (not under fp16 loss scaling, whose scaler skips steps with
            # Inf gradients by design) every gradient, in one multi-tensor norm and one stack
            # (the input only where it is not finite by construction: float images, custom loaders)
            watched = [] if finite_inputs else [("the input batch", None, x, _HINT_DATA)]
            watched.append(("the loss", None, out.loss, _HINT_LR))
            if self.scaler is None and self._grads_every_step():
                watched += [("the gradient of", n, p.grad, _HINT_LR) for n, p in self._named_params]
            mon.watch_step(watched, at=at, head=0 if finite_inputs else 1)
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            if c.train.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], c.train.grad_clip)
            if self.scaler is not None:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            with mon.active():
                rule.after_step(model)
            if self._own_params:  # weights the rule updates itself, outside the optimizer
                mon.watch_tensors("the weight", self._own_params, _HINT_LR)
            self.scheduler.step()
            self.global_step += 1
            b = y.shape[0]
            seen += b
            loss_sum += out.loss.float() * b
            correct += (out.logits.argmax(1) == y).sum()
            for k, v in out.stats.items():
                v = torch.as_tensor(v, dtype=torch.float32, device=self.device)
                sums[k] = sums[k] + v if k in sums else v.clone()
                counts[k] = counts.get(k, 0) + 1
            if every and (i + 1) % every == 0:
                self.check_finite()
            if bar is not None:
                bar.update(1)
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{float(out.loss):.3f}")
        if every:
            self.check_finite()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seen, loss_sum, correct = parallel.epoch_totals(seen, loss_sum, correct)  # distributed: all ranks
        dt = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        res: Dict[str, Any] = {
            "train_loss": float(loss_sum) / max(1, seen),
            "train_acc": float(correct) / max(1, seen),
            "train_time_s": dt,
            "train_images_per_s": seen / dt if dt > 0 else float("nan"),
        }
        # a stat logged every N steps (e.g. alignment angles) is the mean over the steps that logged it
        res.update({f"train/{k}": float(v) / counts[k] for k, v in sums.items()})
        return res

    def _grads_every_step(self) -> bool:
        """``train.check_gradients``: flag every gradient at every step (``step``; ``auto`` on CUDA)
        or only through the weights at each check (``check``; ``auto`` on the CPU)."""
        mode = self.config.train.check_gradients
        return mode == "step" or (mode == "auto" and self.device.type == "cuda")

    def check_finite(self) -> None:
        """Read back the pending NaN/Inf flags (one synchronisation) with the weights and buffers
        as they are now; raise :class:`bioprop.nonfinite.NonFiniteError` naming the first offender.

        Flagged every step: the input batch, the loss, every gradient (not under fp16 loss
        scaling, whose scaler skips Inf steps by design), the weights a rule updates itself, and
        what the rule reports with :func:`bioprop.nonfinite.watch`. The weights the optimizer
        updates (finite when their gradients are) and the buffers are flagged at each check."""
        mon = self.monitor
        if not mon.enabled:
            return
        where = mon.where
        mon.where = (f"the check after {where} (weights are checked every train.check_every steps"
                     + ("" if self._grads_every_step() else
                        ", gradients through them: train.check_gradients=step names the exact step") + ")")
        mon.watch_tensors("the weight", list(self.model.named_parameters()), _HINT_LR)
        mon.watch_tensors("the buffer", [(n, b) for n, b in self.model.named_buffers()
                                         if b.is_floating_point()], _HINT_LR)
        mon.where = where
        try:
            mon.check()
        except NonFiniteError as e:  # name the weights that are broken by now (a sync, once)
            bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
            if bad and "weight '" not in str(e):
                raise NonFiniteError(f"{e} (non-finite weights now: "
                                     f"{', '.join(repr(n) for n in bad[:4])}{' ...' if len(bad) > 4 else ''})") from None
            raise

    def evaluate(self, split: str = "test") -> Dict[str, float]:
        loader = self.dataset.loader(split, self.device)
        return evaluate(self.model, self.rule, loader, self.loss_fn, self._amp())

    def fit(self) -> Dict[str, Any]:
        """Train until ``train.epochs``; return the last epoch's metrics."""
        c = self.config
        self.log(self.describe())
        has_val = self.dataset.val_x is not None if hasattr(self.dataset, "val_x") else False
        tb = _tensorboard_writer(self.run_dir) if c.train.tensorboard and dist_.is_main() else None
        while self.epoch < c.train.epochs:
            row: Dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step}
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row.update(self.train_epoch())
            summary = getattr(self.rule, "epoch_summary", None)  # e.g. ide's unconverged solves
            line = summary() if callable(summary) else None
            if line:
                self.log(line)
            row["step"] = self.global_step
            last = self.epoch + 1 == c.train.epochs
            if last or (self.epoch + 1) % max(1, c.train.eval_every) == 0:
                if has_val:
                    row.update({f"val_{k}": v for k, v in self.evaluate("val").items()})
                row.update({f"test_{k}": v for k, v in self.evaluate("test").items()})
            self.epoch += 1
            self.history.append(row)
            if dist_.is_main():  # distributed: rank 0 alone writes
                self._write_metrics(row)
                if tb is not None:
                    _tensorboard_scalars(tb, row)
            self.log(self._summary(row))
            if last or self.epoch % max(1, c.train.checkpoint_every) == 0:
                state = self._state()  # collective under torchrun (every rank's generator state)
                if dist_.is_main():
                    save_checkpoint(self.run_dir / "checkpoints", self.epoch, self.model, state,
                                    keep=c.train.keep_checkpoints)
                dist_.barrier()
        if tb is not None:
            tb.close()
        final = dict(self.history[-1]) if self.history else {}
        final["run_dir"] = str(self.run_dir)
        return final

    # -- output -----------------------------------------------------------------------------
    def describe(self) -> str:
        c = self.config
        shortened = " (SHORTENED: max_steps_per_epoch)" if c.train.max_steps_per_epoch else ""
        return (f"bioprop: model={c.model['name']} ({count_parameters(self.model):,} params) "
                f"rule={c.rule['name']} data={self.dataset.describe()} device={self.env['device']} "
                f"epochs={c.train.epochs} seed={c.train.seed}{shortened}\nrun dir: {self.run_dir}")

    def _summary(self, row: Dict[str, Any]) -> str:
        parts = [f"epoch {row['epoch']}/{self.config.train.epochs}",
                 f"loss {row['train_loss']:.4f}", f"train acc {100 * row['train_acc']:.2f}%"]
        if "val_acc" in row:
            parts.append(f"val acc {100 * row['val_acc']:.2f}%")
        if "test_acc" in row:
            parts.append(f"test acc {100 * row['test_acc']:.2f}%")
        parts.append(f"{row['train_images_per_s']:.0f} img/s")
        parts.append(f"{row['train_time_s']:.1f}s")
        return " | ".join(parts)

    def _write_metrics(self, row: Dict[str, Any]) -> None:
        """Rewrite ``metrics.jsonl`` and ``metrics.csv`` from the history (atomically), so a
        resumed run never duplicates an epoch that was logged but not checkpointed."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed = self.config.train.seed
        tmp = self.run_dir / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps({**r, "seed": seed}) + "\n" for r in self.history))
        os.replace(tmp, self.run_dir / "metrics.jsonl")
        keys: List[str] = []
        for r in self.history:
            keys.extend(k for k in r if k not in keys)
        tmp = self.run_dir / "metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in self.history:
                w.writerow(r)
        os.replace(tmp, self.run_dir / "metrics.csv")


# -- TensorBoard (train.tensorboard: true) ----------------------------------------------------------
def _tensorboard_writer(run_dir: Path):
    """A ``SummaryWriter`` on ``run_dir/tensorboard``; a one-line error when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError('train.tensorboard=true needs the tensorboard package: pip install "bioprop[tensorboard]" '
                          "(or set train.tensorboard=false)") from None
    return SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))


def _tensorboard_scalars(writer, row: Dict[str, Any]) -> None:
    """One epoch's metrics as scalars at step = epoch: ``train_loss`` -> ``loss/train``,
    ``test_acc`` -> ``acc/test``; names with a ``/`` (``train/solver/iters``) as they are."""
    for k, v in row.items():
        if k in ("epoch", "step") or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        split, _, metric = k.partition("_")
        tag = f"{metric}/{split}" if "/" not in k and split in ("train", "val", "test") and metric else k
        writer.add_scalar(tag, v, global_step=row["epoch"])
    writer.flush()


def _yaml(d: Dict[str, Any]) -> str:
    import yaml

    def plain(o):
        if isinstance(o, tuple):
            return [plain(v) for v in o]
        if isinstance(o, list):
            return [plain(v) for v in o]
        if isinstance(o, dict):
            return {k: plain(v) for k, v in o.items()}
        return o

    return yaml.safe_dump(plain(d), sort_keys=False)


def evaluate_checkpoint(path: Union[str, Path], split: str = "test", device: str = "auto",
                        overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    """Rebuild the run stored in checkpoint ``path`` (a checkpoint, or a run directory) and
    evaluate it on ``split``. ``overrides`` (``data.data_dir=...``) adjust the stored config."""
    from .config import apply_overrides

    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise NoCheckpointError(f"{path}: no bioprop checkpoint found (expected a run directory or a "
                                "checkpoints/epoch_NNNN directory)")
    state = load_checkpoint(ckpt)
    raw = apply_overrides(state["config"], list(overrides or []) + [f"train.device={device}"])
    config = RunConfig.from_dict(raw)
    dev = resolve_device(config.train.device)
    dataset, model, rule = build_run(config, dev)
    from .checkpoint import load_weights

    load_weights(model, ckpt)
    loss_fn = lambda logits, y: F.cross_entropy(logits, y)  # noqa: E731
    res = evaluate(model, rule, dataset.loader(split, dev), loss_fn)
    return {"checkpoint": str(ckpt), "split": split, "epoch": state["epoch"], **res, **environment(dev)}
