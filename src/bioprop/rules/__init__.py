"""Credit-assignment rules (``create_rule``). Each rule fills ``.grad``; see :mod:`.base`."""

from . import backprop  # noqa: F401  (registers bp, bptt)
from .base import RULES, LossFn, Rule, StepOutput, create_rule

__all__ = ["RULES", "LossFn", "Rule", "StepOutput", "create_rule"]
