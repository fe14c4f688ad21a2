"""Every neuron model of bioprop, functional: (L)IF step functions over explicit state, TSSL-BP's
LIF with synaptic response (:mod:`.psp`), surrogate spike functions, (weighted) firing-rate
accumulators and their fused fast path with its options (:mod:`.fastsim`). Uses nothing else of
bioprop."""

from .lif import (
    FusedRatePopulation,
    NeuronParams,
    RatePopulation,
    RateState,
    if_step,
    LIF_IMPLS,
    lif_multistep,
    lif_multistep_fused,
    lif_step,
    rate_init,
    rate_update,
    rate_value,
)
from .emstdp import bernoulli_code, if_zero_step, output_error_current, ternary_step
from .fastsim import SimOptions
from .psp import Neuron, TSSLState, TSSLTrace, lif_psp_multistep, lif_psp_step, psp_filter, psp_kernel, strict_heaviside
from .surrogate import SURROGATES, heaviside, relaxed, spike_fn, surrogate_derivative, surrogate_derivative_, surrogate_of

__all__ = [
    "FusedRatePopulation",
    "NeuronParams",
    "RatePopulation",
    "RateState",
    "if_step",
    "lif_step",
    "lif_multistep",
    "lif_multistep_fused",
    "LIF_IMPLS",
    "rate_init",
    "rate_update",
    "rate_value",
    "SimOptions",
    "bernoulli_code",
    "if_zero_step",
    "output_error_current",
    "ternary_step",
    "Neuron",
    "TSSLState",
    "TSSLTrace",
    "lif_psp_step",
    "lif_psp_multistep",
    "psp_filter",
    "psp_kernel",
    "strict_heaviside",
    "SURROGATES",
    "heaviside",
    "relaxed",
    "spike_fn",
    "surrogate_derivative",
    "surrogate_derivative_",
    "surrogate_of",
]
