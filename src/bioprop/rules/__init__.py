"""Credit-assignment rules (``create_rule``). Each rule fills ``.grad``; see :mod:`.base`."""

from . import alignment, backprop, ekdaa, emstdp, ide, predictive_coding, tssl  # noqa: F401  (register the rules)
from .base import RULES, LossFn, Rule, StepOutput, create_rule

__all__ = ["RULES", "LossFn", "Rule", "StepOutput", "create_rule"]
