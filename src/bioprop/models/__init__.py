"""Model registry (``create_model``) and the architectures of the papers bioprop reproduces."""

from . import ekdaa_nets, emstdp, feedback, feedforward, resnet, tssl_nets  # noqa: F401  (register the models)
from .base import MODELS, Edge, SpikeRecord, conv_out, count_parameters, create_model
from .protocols import (BlockModel, EquilibriumModel, EquilibriumState, FeedbackDiagnostics, GraphModel, LayeredIFModel, ProtocolError,
                        PSPModel, SpikingModel, StatisticsModel, blocks_of, models_satisfying, require, satisfies)
from .feedforward import FeedforwardNet, SpikingFeedforwardNet

__all__ = [
    "MODELS",
    "Edge",
    "SpikeRecord",
    "blocks_of",
    "conv_out",
    "count_parameters",
    "create_model",
    "BlockModel",
    "EquilibriumModel",
    "EquilibriumState",
    "FeedbackDiagnostics",
    "GraphModel",
    "LayeredIFModel",
    "ProtocolError",
    "PSPModel",
    "SpikingModel",
    "StatisticsModel",
    "models_satisfying",
    "require",
    "satisfies",
    "FeedforwardNet",
    "SpikingFeedforwardNet",
]
