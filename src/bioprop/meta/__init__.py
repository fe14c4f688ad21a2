"""Meta-learned plasticity (Shervani-Tabar & Rosenbaum, Nature Communications 2023).

A trainer built from the library's parts, not a rule: the inner rule
:class:`~bioprop.meta.plasticity.Plasticity` (online ``dW_l = sum_r theta_r F_r`` through fixed
random, symmetric or Kolen-Pollack-learned feedback; the terms are the registry
:data:`~bioprop.meta.terms.TERMS`) and the outer :class:`~bioprop.meta.learner.MetaLearner`
(episodes of M classes x K images, Adam on theta through the unrolled inner loop, a meta-test on
held-out classes). ``bioprop meta --config configs/meta_plasticity_*.yaml`` runs it.
"""

from .episodes import ClassPool, Episode, episode_generator
from .learner import MetaConfig, MetaLearner, MetaRunConfig, PoolConfig, load_meta_config
from .plasticity import PlasticNet, Plasticity, PlasticityConfig, angle_deg, error_signals
from .terms import TERMS, Term, TermInputs, resolve_terms

__all__ = ["ClassPool", "Episode", "episode_generator", "MetaConfig", "MetaLearner", "MetaRunConfig",
           "PoolConfig", "load_meta_config", "PlasticNet", "Plasticity", "PlasticityConfig", "angle_deg",
           "error_signals", "TERMS", "Term", "TermInputs", "resolve_terms"]
