"""The ``Rule`` contract: a credit-assignment rule fills ``p.grad``; everything after is plain PyTorch.

A rule's life (DESIGN.md):

- ``model = rule.prepare(model)`` once (swap layers, install implicit backward, check the model);
- ``out = rule.step(model, x, y, loss_fn)`` per batch: forward pass and credit assignment. It
  leaves a (pseudo-)gradient in ``.grad`` of every trainable parameter and returns a
  :class:`StepOutput` (detached loss, logits, and a dict of scalar diagnostics);
- ``rule.after_step(model)`` after ``optimizer.step()`` (re-signing, clamps, noisy updates);
- ``rule.predict(model, x)`` the logits used for evaluation (no gradient);
- ``rule.state_dict()`` / ``rule.load_state_dict()``: the rule's own state, its random generator
  included, so that a resumed run is bit-identical.

Rules never own or step the optimizer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..config import Registry
from ..models.protocols import require

__all__ = ["Rule", "StepOutput", "RULES", "create_rule", "LossFn", "rng_state", "diagnostic_pass"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class StepOutput:
    """What ``Rule.step`` returns: detached ``loss`` and ``logits`` and scalar ``stats``.

    ``stats`` values may be 0-dim tensors (kept on the device, so no synchronisation per step)
    or Python floats; the trainer averages them over an epoch.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    stats: Dict[str, Any] = field(default_factory=dict)


class Rule:
    """Base class of all rules. Subclasses set ``name`` and override ``step`` (and maybe more)."""

    name: str = "rule"
    #: the protocol of :mod:`bioprop.models.protocols` the rule needs of a model (``None``: any
    #: ``nn.Module``); ``prepare`` checks it once and names what is missing
    protocol: Optional[type] = None
    #: how the gradient ``step`` writes depends on the batch: ``"mean"`` (of the per-sample losses:
    #: data-parallel ranks average it, weighted by shard size) or ``"sum"`` (ranks add it)
    grad_reduction: str = "mean"

    def __init__(self, config: Any = None):
        self.config = config
        self.generator = torch.Generator()
        self.generator.manual_seed(0)
        #: training steps taken (rules that act every N steps read it; saved with the rule's state)
        self.steps = 0

    # -- life cycle -------------------------------------------------------------------------
    def seed(self, seed: int) -> None:
        """Seed the rule's own random generator (noise, masks); called by the trainer."""
        self.generator.manual_seed(int(seed))

    def prepare(self, model: nn.Module) -> nn.Module:
        """Prepare ``model`` for this rule (once, after it is on its device). Returns the model."""
        if self.protocol is not None:
            require(model, self.protocol, f"rule {self.name!r}")
        dev = _model_device(model)
        if self.generator.device != dev:
            state_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            self.generator = torch.Generator(device=dev)
            self.generator.manual_seed(state_seed)
        return model

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Training-mode forward pass returning logits (autograd on)."""
        return model(x)

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
             scaler: Optional["torch.amp.GradScaler"] = None) -> StepOutput:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation."""
        return model(x)

    def after_step(self, model: nn.Module) -> None:
        """Called after ``optimizer.step()``."""

    def own_parameters(self, model: nn.Module) -> List[nn.Parameter]:
        """Parameters the rule updates itself (in ``after_step``, with an optimizer of its own);
        the trainer leaves them out of its optimizer."""
        return []

    def no_weight_decay(self, model: nn.Module) -> List[nn.Parameter]:
        """Parameters the optimizer must not decay (the trainer puts them in a group with
        ``weight_decay = 0``), e.g. backward kernels whose regulariser has its own decay term."""
        return []

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"generator": self.generator.get_state(), "steps": self.steps}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu() if hasattr(state["generator"], "cpu") else state["generator"])
        self.steps = state.get("steps", 0)

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def backward(loss: torch.Tensor, scaler: Optional["torch.amp.GradScaler"] = None) -> None:
        """``loss.backward()``, scaled when an fp16 ``GradScaler`` is in use."""
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


RngState = Tuple[torch.Tensor, Dict[torch.device, torch.Tensor]]


def rng_state(model: nn.Module) -> RngState:
    """The global random state a forward pass of ``model`` draws from (dropout masks): the CPU
    generator's and, for a model on CUDA, that device's."""
    devs = {p.device for p in model.parameters() if p.device.type == "cuda"}
    return torch.get_rng_state(), {d: torch.cuda.get_rng_state(d) for d in devs}


def _set_rng_state(state: RngState) -> None:
    torch.set_rng_state(state[0])
    for d, s in state[1].items():
        torch.cuda.set_rng_state(s, d)


@contextmanager
def diagnostic_pass(model: nn.Module, replay: Optional[RngState] = None) -> Iterator[None]:
    """Run an extra (diagnostic) training-mode pass of ``model`` with no effect on training.

    On exit every buffer of the model (BatchNorm running statistics and counters) and the global
    random state are what they were on entry, so a run with diagnostics follows the same trajectory
    as one without. With ``replay`` (a :func:`rng_state` taken before the step's own forward) the
    pass draws the same random numbers as that forward: the same dropout masks, so a comparison
    with BP is made on the same network."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    entry = rng_state(model)
    if replay is not None:
        _set_rng_state(replay)
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in buffers:
                b.copy_(v)
        _set_rng_state(entry)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


RULES: Registry[Rule] = Registry("rule")


def create_rule(name: str, config: Any = None, **kwargs: Any) -> Rule:
    """Build a registered rule by name: ``create_rule("bptt")``, ``create_rule("ide", solver="broyden")``.

    Unknown keyword arguments raise :class:`bioprop.config.ConfigError` naming the valid keys.
    """
    return RULES.create(name, config, **kwargs)
