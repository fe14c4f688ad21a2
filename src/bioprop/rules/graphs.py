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
    """Capture ``fn(*inputs)`` once per (shape, dtype) of its tensor inputs as a CUDA graph and
    replay it (``inputs``: the batch ``x, y`` of a training step, or any tensors)."""

    def __init__(self, fn: Callable[..., Any], model: nn.Module, warmup: int = 3):
        self.fn = fn
        self.model = model
        self.warmup = warmup
        self.graphs: Dict[Tuple, Dict[str, Any]] = {}

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if any(t.device.type != "cuda" for t in inputs):
            raise ValueError("GraphedStep needs CUDA tensors")
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        if key not in self.graphs:
            self.graphs[key] = self._capture(inputs)
        g = self.graphs[key]
        for static, t in zip(g["inputs"], inputs):
            static.copy_(t)
        g["graph"].replay()
        return g["out"]

    def _capture(self, inputs: Tuple[torch.Tensor, ...]) -> Dict[str, Any]:
        static = [t.detach().clone() for t in inputs]
        device = static[0].device
        saved = {k: b.detach().clone() for k, b in self.model.named_buffers()}
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up (allocator, cuDNN plans, autograd) off the main stream
            for _ in range(self.warmup):
                self.fn(*static)
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.no_grad():
            for k, b in self.model.named_buffers():
                b.copy_(saved[k])
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(*static)
        return {"inputs": static, "graph": graph, "out": out}
