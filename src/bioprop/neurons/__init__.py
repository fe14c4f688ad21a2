"""Functional spiking neurons: step functions over explicit state, surrogate spike functions,
and (weighted) firing-rate accumulators. Uses nothing else of bioprop."""

from .lif import (
    FusedRatePopulation,
    NeuronParams,
    RatePopulation,
    RateState,
    if_step,
    lif_multistep,
    lif_step,
    rate_init,
    rate_update,
    rate_value,
)
from .surrogate import SURROGATES, heaviside, relaxed, spike_fn, surrogate_derivative

__all__ = [
    "FusedRatePopulation",
    "NeuronParams",
    "RatePopulation",
    "RateState",
    "if_step",
    "lif_step",
    "lif_multistep",
    "rate_init",
    "rate_update",
    "rate_value",
    "SURROGATES",
    "heaviside",
    "relaxed",
    "spike_fn",
    "surrogate_derivative",
]
