"""CUDA-graph capture of a rule's gradient computation, for rules whose step is many small kernels.

A rule whose step is a fixed sequence of tensor operations (no host synchronisation, no
data-dependent Python control flow) can run it as one CUDA graph: the first step with a given
input shape captures the graph, later steps copy the batch into its static input buffers and
replay it, which removes the per-kernel launch cost and the Python and autograd overhead.

``GraphedStep(fn)`` wraps ``fn(x, y) -> outputs`` (a tuple/list/dict tree of tensors; the gradients
are among the outputs, ``fn`` must not write ``.grad`` itself). The outputs are static tensors that
the next replay overwrites: use them, or clone them, before the next call. Model buffers (e.g.
BatchNorm running statistics) are restored after the warm-up runs that capture needs, so the
captured step changes the model exactly as one eager step does. Parameters are read in place, so an
optimizer that updates them in place (every ``torch.optim`` optimizer) keeps the graph valid.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch
from torch import nn

__all__ = ["GraphedStep"]


class GraphedStep:
    """Capture ``fn(x, y)`` once per (shape, dtype) of the batch as a CUDA graph and replay it."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], Any], model: nn.Module, warmup: int = 3):
        self.fn = fn
        self.model = model
        self.warmup = warmup
        self.graphs: Dict[Tuple, Dict[str, Any]] = {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        if x.device.type != "cuda":
            raise ValueError("GraphedStep needs CUDA tensors")
        key = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype, x.device)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, y)
        g = self.graphs[key]
        g["x"].copy_(x)
        g["y"].copy_(y)
        g["graph"].replay()
        return g["out"]

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, Any]:
        sx, sy = x.detach().clone(), y.detach().clone()
        saved = {k: b.detach().clone() for k, b in self.model.named_buffers()}
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up (allocator, cuDNN plans, autograd) off the main stream
            for _ in range(self.warmup):
                self.fn(sx, sy)
        torch.cuda.current_stream(x.device).wait_stream(side)
        with torch.no_grad():
            for k, b in self.model.named_buffers():
                b.copy_(saved[k])
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(sx, sy)
        return {"x": sx, "y": sy, "graph": graph, "out": out}
