"""Fixed-point solvers and implicit differentiation of equilibria. Uses nothing else of bioprop."""

from .implicit import adjoint_solve, implicit, jacobian_vjp
from .solvers import SOLVERS, SolverError, SolverResult, SolverWarning, anderson, broyden, fixed_point, solve

__all__ = [
    "adjoint_solve",
    "implicit",
    "jacobian_vjp",
    "SOLVERS",
    "SolverError",
    "SolverResult",
    "SolverWarning",
    "anderson",
    "broyden",
    "fixed_point",
    "solve",
]
