"""bioprop: train spiking and non-spiking networks with credit-assignment rules other than exact
backpropagation (implicit differentiation, feedback alignment and its relatives, predictive
coding, ...) and compare them fairly: same models, data, trainer and metrics.

The public API::

    model = bioprop.create_model("spiking_convnet", time_steps=4)
    rule = bioprop.create_rule("bptt")
    data = bioprop.create_dataset("mnist_embedded")
    model = rule.prepare(model)
    out = rule.step(model, x, y, loss_fn)     # fills p.grad; returns loss, logits, stats
"""

from ._version import __version__
from .config import ConfigError
from .data import DATASETS, DataError, create_dataset
from .models import MODELS, create_model
from .nonfinite import NonFiniteError
from .rules import RULES, Rule, StepOutput, create_rule
from .train import RunConfig, Trainer, evaluate_checkpoint, load_config

__all__ = [
    "ConfigError",
    "DATASETS",
    "DataError",
    "create_dataset",
    "MODELS",
    "create_model",
    "NonFiniteError",
    "RULES",
    "Rule",
    "StepOutput",
    "create_rule",
    "RunConfig",
    "Trainer",
    "evaluate_checkpoint",
    "load_config",
    "__version__",
]
