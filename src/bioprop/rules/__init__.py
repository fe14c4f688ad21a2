"""Credit-assignment rules (``create_rule``). Each rule fills ``.grad``; see :mod:`.base`."""

from . import backprop, ide, predictive_coding  # noqa: F401  (register bp, bptt, ide, pc)
from .base import RULES, LossFn, Rule, StepOutput, create_rule

__all__ = ["RULES", "LossFn", "Rule", "StepOutput", "create_rule"]
