"""NIR export and import of bioprop's spiking networks (the ``nir`` package, ``pip install bioprop[nir]``).

NIR (Pedersen et al., Nat. Commun. 2024) describes neurons as continuous-time ODEs; bioprop's
neurons are discrete-time maps. The exported graph carries a time step ``dt`` (graph metadata
``bioprop.dt``, default ``1e-4`` s, snnTorch's import step) and every neuron's constants are
chosen so that the forward-Euler step of the NIR ODE with that ``dt`` *is* bioprop's update:

| bioprop neuron | NIR nodes | constants (Euler step = our map) |
| --- | --- | --- |
| LIF, reset to zero: ``v = l r + I``, ``r = v (1 - s)`` | ``LIF`` | ``tau = dt / (1 - l)``, ``r = 1 / (1 - l)``, ``v_leak = v_reset = 0`` |
| IF, reset to zero (``l = 1``) | ``IF`` | ``r = 1 / dt``, ``v_reset = 0`` |
| LIF / IF, reset by subtraction: ``v[t] = l (v[t-1] - theta s[t-1]) + I[t]`` | ``LI`` (``I`` for IF) -> ``Threshold``, and a self-loop ``Threshold -> Scale(-l theta) -> LI`` | LI as above (no reset); the loop is a cycle, one step of delay |
| TSSL-BP LIF with synaptic response (reset to zero) | ``CubaLIF`` | ``tau_syn = dt tau_s``, ``tau_mem = dt tau_m``, ``r = tau_m``, ``w_in = 1`` |

NIR's ``LIF``/``IF`` reset to ``v_reset``: a reset by subtraction has no NIR neuron, so it is
written exactly with NIR's primitives (a leaky integrator without reset, a threshold and the
reset fed back as a current), never as a ``LIF`` that would reset to zero. The leak acting
*after* the reset (IDE's neurons) is the ``-l theta`` weight of that loop. Every cycle of the
graph (that loop, and a feedback connection such as IDE's ``W s[t-1]``) carries one step of
delay, as discrete-time NIR consumers (snnTorch, Norse, nirtorch) run cycles; the feedback node's
metadata says ``delay_steps = 1``. Our IF/LIF fire at ``v >= theta``, TSSL-BP's at ``v > theta``; NIR
does not say which (snnTorch fires at ``v > theta``): each neuron node's metadata
``fire_at_equality`` says it. The results differ only where a membrane equals the threshold
exactly.

Synapses: ``Linear``/``Conv2d`` with their bias (``Affine``/``Conv2d``); BatchNorm in evaluation
mode is folded into the preceding layer (``w' = w g / sqrt(var + eps)``, ``b' = (b - mean) g /
sqrt(var + eps) + beta``; exact up to float rounding); dropout is the identity (evaluation);
average and TSSL-BP's sum pooling are ``AvgPool2d`` / ``SumPool2d`` (+ ``Scale``); the
spectral-normalised feedback is exported as the weight it applies, ``clamp(g) V / sigma(V)``;
a transposed convolution (AlexNet-F's feedback), which NIR lacks, as the dense matrix of the
operator, and then every layer of that model dense, since NIR has no unflatten node either
(refused above ``dense_limit`` weights a layer). Refused, with the reason: max pooling (not a
linear map of spikes; use ``pool='avg'``), string or non-zero padding modes, a BatchNorm that
follows no weight layer, any other module. The export describes the evaluation-mode network.

Readout: the graph's ``Output`` is, per time step, the readout current (spiking MLP/convnet,
feedback SNNs) or the output layer's spikes (TSSL-BP); the logits are a reduction over time
recorded in the metadata (``bioprop.readout``): ``mean`` (feedforward), ``leak_weighted_mean``
(IDE: ``sum_t l^(T-1-t) o[t] / sum_k l^k``), ``psp_sum`` (TSSL-BP: the time sum of the output
spikes' PSPs). :func:`run_nir` runs any graph made of the nodes above in discrete time and
applies that reduction.

Import: :func:`from_nir` rebuilds the bioprop model from the registered name and config and the
exact parameter values stored with the graph (metadata ``bioprop_state``: the BatchNorm statistics and
the spectral normalisation's ``V``, ``g`` cannot be recovered from folded weights), and checks
that re-exporting them gives the graph's nodes: a graph edited after export is refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import create_model
from ..models.feedforward import SpikingFeedforwardNet
from ..models.protocols import EquilibriumModel, satisfies
from ..models.spectral import SpectralNormOperator
from ..models.tssl_nets import PSPDropout, SumPool2d, TSSLNet

__all__ = ["to_nir", "from_nir", "save_nir", "load_nir", "run_nir", "reduce_readout", "export_run", "fold_bn",
           "NIRExportError", "FORMAT"]

FORMAT = 1
DEFAULT_DT = 1e-4


class NIRExportError(ValueError):
    """A model (or a part of it) has no exact NIR equivalent, or a graph cannot be imported."""


def _nir():
    try:
        import nir  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("NIR export needs the 'nir' package: pip install 'bioprop[nir]'") from e
    return nir


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


class _Builder:
    """Collects NIR nodes and edges; walks module chains, folding BatchNorm into the layer before."""

    def __init__(self, dt: float, dtype: torch.dtype, dense_limit: Optional[int]):
        self.nir = _nir()
        self.nodes: Dict[str, Any] = {}
        self.edges: List[Tuple[str, str]] = []
        self.dt = float(dt)
        self.dtype = dtype
        self.dense_limit = dense_limit

    def add(self, name: str, node: Any, src: Optional[str] = None) -> str:
        if name in self.nodes:
            raise AssertionError(f"duplicate NIR node {name}")
        self.nodes[name] = node
        if src is not None:
            self.edges.append((src, name))
        return name

    def full(self, shape: Sequence[int], value: float) -> np.ndarray:
        return np.full(tuple(shape), value, dtype=np.float64)

    # -- synapses ---------------------------------------------------------------------------
    def chain(self, src: str, mods: Sequence[nn.Module], prefix: str, shape: Tuple[int, ...],
              dense: bool = False) -> Tuple[str, Tuple[int, ...]]:
        """Nodes for the modules ``mods`` applied in order to a ``shape`` input (BatchNorm folded
        into the layer before it); returns the last node and its shape. ``dense``: the whole
        (affine) chain as one ``Affine`` node on flattened vectors."""
        nir = self.nir
        mods = [m for m in mods if not isinstance(m, (nn.Dropout, PSPDropout, nn.Identity))]
        if dense:
            return self.dense(src, mods, prefix, shape)
        groups: List[List[nn.Module]] = []
        for m in mods:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if not groups or not isinstance(groups[-1][0], (nn.Linear, nn.Conv2d)) or len(groups[-1]) > 1:
                    raise NIRExportError(f"{prefix}: a BatchNorm not preceded by a Linear/Conv2d cannot be folded")
                groups[-1].append(m)
            else:
                groups.append([m])
        for i, g in enumerate(groups):
            m = g[0]
            bn = g[1] if len(g) > 1 else None
            name = f"{prefix}.{i}" if len(groups) > 1 else prefix
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w, b = fold_bn(m.weight, m.bias, bn)
                if isinstance(m, nn.Linear):
                    node = nir.Affine(weight=_np(w), bias=_np(b)) if b is not None else nir.Linear(weight=_np(w))
                else:
                    if m.padding_mode != "zeros" or isinstance(m.padding, str):
                        raise NIRExportError(f"{name}: padding {m.padding!r}/{m.padding_mode!r} is not written; use integer zero padding")
                    if b is None:
                        b = torch.zeros(w.shape[0], dtype=w.dtype)
                    node = nir.Conv2d(input_shape=tuple(shape[1:]), weight=_np(w), stride=tuple(m.stride),
                                      padding=tuple(m.padding), dilation=tuple(m.dilation), groups=m.groups, bias=_np(b))
            elif isinstance(m, nn.Flatten) and len(shape) == 1:
                continue  # flattening a vector: nothing to write
            elif isinstance(m, nn.Flatten):
                if m.start_dim != 1 or m.end_dim != -1:
                    raise NIRExportError(f"{name}: only Flatten(1, -1) is written")
                node = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
            elif isinstance(m, nn.AvgPool2d):
                if m.ceil_mode or not m.count_include_pad or m.divisor_override is not None:
                    raise NIRExportError(f"{name}: AvgPool2d with ceil_mode, count_include_pad=False or divisor_override "
                                         "has no NIR equivalent")
                node = nir.AvgPool2d(kernel_size=np.array(_pair(m.kernel_size)), stride=np.array(_pair(m.stride)),
                                     padding=np.array(_pair(m.padding)))
            elif isinstance(m, SumPool2d):
                src = self.add(name + ".sum", nir.SumPool2d(kernel_size=np.array([m.kernel, m.kernel]),
                                                            stride=np.array([m.kernel, m.kernel]), padding=np.array([0, 0])), src)
                shape = _shape_after(g, shape, self.dtype)
                src = self.add(name, nir.Scale(scale=self.full(shape, m.scale)), src)
                continue
            elif isinstance(m, nn.MaxPool2d):
                raise NIRExportError(f"{name}: max pooling has no NIR equivalent (NIR 1.0 has sum and average pooling "
                                     "only, and a max of spikes is not a linear map of them); build the model with pool='avg'")
            else:
                raise NIRExportError(f"{name}: {type(m).__name__} has no NIR mapping in bioprop's exporter")
            shape = _shape_after(g, shape, self.dtype)
            src = self.add(name, node, src)
        return src, shape

    def dense(self, src: str, mods: Sequence[nn.Module], name: str, shape: Tuple[int, ...],
              fn=None) -> Tuple[str, Tuple[int, ...]]:
        """An affine map (``mods`` in evaluation mode, or ``fn``) written as one ``Affine`` on
        flattened vectors: its exact matrix (the map of the unit vectors minus the map of zero)."""
        n_in = math.prod(shape)
        dev = torch.device("cpu")
        if fn is None:
            seq = nn.Sequential(*mods)
            dev = _device_of(seq)

            def fn(z):
                was = [m.training for m in mods]
                for m in mods:
                    m.eval()
                try:
                    return seq(z)
                finally:
                    for m, w in zip(mods, was):
                        m.train(w)
        with torch.no_grad():
            zero = fn(torch.zeros((1,) + tuple(shape), dtype=self.dtype, device=dev))
            out_shape = tuple(zero.shape[1:])
            n_out = math.prod(out_shape)
            if self.dense_limit is not None and n_in * n_out > self.dense_limit:
                raise NIRExportError(
                    f"{name}: the exact dense form has {n_in} x {n_out} = {n_in * n_out:,} weights, above dense_limit="
                    f"{self.dense_limit:,}. NIR 1.0 has no transposed convolution and no unflatten node, so a model "
                    "with a transposed-convolution feedback (alexnet_f, cifarnet_f) is written with every layer dense; "
                    "pass a larger dense_limit (or None) to export it anyway, or export a smaller input size")
            eye = torch.eye(n_in, dtype=self.dtype, device=dev).reshape((n_in,) + tuple(shape))
            mat = (fn(eye) - zero).reshape(n_in, n_out).t()
            bias = zero.reshape(n_out)
        if len(shape) > 1 and src != "input":
            raise AssertionError("dense chains act on flat populations")
        if bool((bias != 0).any()):
            node = self.nir.Affine(weight=_np(mat), bias=_np(bias))
        else:
            node = self.nir.Linear(weight=_np(mat))
        if len(shape) > 1:
            src = self.add(name + ".flatten", self.nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0), src)
        return self.add(name, node, src), (n_out,)

    def operator(self, src: str, op: SpectralNormOperator, name: str, shape: Tuple[int, ...],
                 dense: bool = False) -> Tuple[str, Tuple[int, ...]]:
        """The feedback operator with its effective weight ``clamp(g) V / sigma(V)`` (no bias)."""
        nir = self.nir
        with torch.no_grad():
            w = op.weight(update=False).to(self.dtype)
        if dense:
            src, out = self.dense(src, [], name, (math.prod(op.in_shape),),
                                  fn=lambda z: op.apply_op(z.unflatten(1, tuple(op.in_shape)), w))
            self.nodes[name].metadata = {"delay_steps": np.int64(1)}
            return src, out
        if op.kind == "Linear":
            node = nir.Linear(weight=_np(w))
        elif op.kind == "Conv2d":
            o = op.opts
            node = nir.Conv2d(input_shape=tuple(shape[1:]), weight=_np(w), stride=tuple(o["stride"]), padding=tuple(o["padding"]),
                              dilation=tuple(o["dilation"]), groups=o["groups"], bias=np.zeros(w.shape[0]))
        else:
            raise AssertionError("a transposed convolution is exported dense")
        node.metadata = {"delay_steps": np.int64(1)}
        return self.add(name, node, src), tuple(op.out_shape)

    # -- neurons ----------------------------------------------------------------------------
    def neuron(self, name: str, shape: Tuple[int, ...], threshold: float, leak: float, reset: str,
               ge: bool = True) -> Tuple[str, str]:
        """A population of IF/LIF neurons; returns ``(input node, output node)``."""
        nir = self.nir
        dt = self.dt
        meta = {"fire_at_equality": np.bool_(ge)}
        if reset == "zero":
            if leak == 1.0:
                node = nir.IF(r=self.full(shape, 1 / dt), v_threshold=self.full(shape, threshold),
                              v_reset=self.full(shape, 0.0), metadata=meta)
            else:
                node = nir.LIF(tau=self.full(shape, dt / (1 - leak)), r=self.full(shape, 1 / (1 - leak)),
                               v_leak=self.full(shape, 0.0), v_threshold=self.full(shape, threshold),
                               v_reset=self.full(shape, 0.0), metadata=meta)
            self.add(name, node)
            return name, name
        if reset != "subtract":
            raise NIRExportError(f"{name}: reset {reset!r} has no NIR mapping")
        if leak == 1.0:
            mem = nir.I(r=self.full(shape, 1 / dt))
        else:
            mem = nir.LI(tau=self.full(shape, dt / (1 - leak)), r=self.full(shape, 1 / (1 - leak)), v_leak=self.full(shape, 0.0))
        v = self.add(name + ".v", mem)
        s = self.add(name, nir.Threshold(threshold=self.full(shape, threshold), metadata=meta), v)
        self.add(name + ".reset", nir.Scale(scale=self.full(shape, -leak * threshold), metadata={"delay_steps": np.int64(1)}), s)
        self.edges.append((name + ".reset", v))
        return v, s

    def cuba(self, name: str, shape: Tuple[int, ...], tau_m: float, tau_s: float, threshold: float) -> str:
        nir = self.nir
        dt = self.dt
        node = nir.CubaLIF(tau_syn=self.full(shape, dt * tau_s), tau_mem=self.full(shape, dt * tau_m), r=self.full(shape, tau_m),
                           v_leak=self.full(shape, 0.0), v_threshold=self.full(shape, threshold), v_reset=self.full(shape, 0.0),
                           w_in=self.full(shape, 1.0), metadata={"fire_at_equality": np.bool_(False)})
        return self.add(name, node)


def _pair(v) -> Tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _shape_after(mods: Sequence[nn.Module], shape: Tuple[int, ...], dtype: torch.dtype) -> Tuple[int, ...]:
    """Per-sample output shape of ``mods`` (evaluation mode) on a ``shape`` input."""
    z = torch.zeros((1,) + tuple(shape), dtype=dtype, device=_device_of(mods[0]))
    with torch.no_grad():
        for m in mods:
            was = m.training
            m.eval()
            z = m(z)
            m.train(was)
    return tuple(z.shape[1:])


def _device_of(m: nn.Module) -> torch.device:
    for p in m.parameters():
        return p.device
    for b in m.buffers():
        return b.device
    return torch.device("cpu")


def fold_bn(weight: torch.Tensor, bias: Optional[torch.Tensor], bn: Optional[nn.Module]
            ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(w', b')`` of a Linear/Conv2d followed by BatchNorm ``bn`` in evaluation mode (running
    statistics): ``w' = w g / sqrt(var + eps)``, ``b' = (b - mean) g / sqrt(var + eps) + beta``."""
    w = weight.detach()
    b = bias.detach() if bias is not None else None
    if bn is None:
        return w, b
    if bn.running_mean is None:
        raise NIRExportError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    scale = 1 / torch.sqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.detach()
    shift = -bn.running_mean * scale + (bn.bias.detach() if bn.affine else 0)
    wf = w * scale.view((-1,) + (1,) * (w.dim() - 1))
    bf = shift if b is None else b * scale + shift
    return wf, bf


# -- per model family -------------------------------------------------------------------------
def _export_feedforward(model: SpikingFeedforwardNet, b: _Builder) -> Dict[str, Any]:
    p = model.neuron
    src, shape = "input", tuple(model.in_shape)
    names = model.layer_names()
    for i, block in enumerate(model.layers):
        mods = list(block) if isinstance(block, nn.Sequential) else [block]
        src, shape = b.chain(src, mods, f"layers.{i}", shape)
        if i < len(names):
            vin, vout = b.neuron(names[i], shape, p.threshold, p.leak, p.reset, ge=True)
            b.edges.append((src, vin))
            src = vout
    b.edges.append((src, "output"))
    return {"reduce": "mean"}, shape


def _export_tssl(model: TSSLNet, b: _Builder):
    src, shape = "input", tuple(model.in_shape)
    # the output population is 'output' in bioprop's records; NIR's Output node has that name
    names = [n if n != "output" else "output_neurons" for n in model.layer_names()]
    for i, block in enumerate(model.layers):
        mods = list(block) if isinstance(block, nn.Sequential) else [block]
        src, shape = b.chain(src, mods, f"layers.{i}", shape)
        b.edges.append((src, b.cuba(names[i], shape, model.tau_m, model.tau_s, model.threshold)))
        src = names[i]
    b.edges.append((src, "output"))
    return {"reduce": "psp_sum", "tau_s": model.tau_s}, shape


def _export_feedback(model: nn.Module, b: _Builder):
    """Feedback SNNs (IDE): walks ``graph()``; ``encoder`` + ``bn``, ``convs.i`` + ``bns.i``, the
    spectral ``feedback`` (a cycle with one step of delay) and the ``classifier``."""
    p = model.neuron
    edges = model.graph()
    pops: Dict[str, Tuple[str, str]] = {}
    shapes: Dict[str, Tuple[int, ...]] = {"input": tuple(model.in_shape)}
    outs: Dict[str, str] = {"input": "input"}
    # forward edges in order (each population's shape comes from its input edge)
    pending = [e for e in edges if not e.feedback]
    fb = [e for e in edges if e.feedback]
    # NIR 1.0 has no transposed convolution and no unflatten: such a feedback is written dense,
    # and then every layer (flat populations)
    dense = any(model.get_submodule(e.via).kind == "ConvTranspose2d" for e in fb
                if isinstance(model.get_submodule(e.via), SpectralNormOperator))
    out_shape = None
    model_shapes: Dict[str, Tuple[int, ...]] = {"input": tuple(model.in_shape)}
    for e in pending:
        mod = model.get_submodule(e.via)
        if e.via == "encoder":
            bn = model.bn
        elif e.via.startswith("convs."):
            bn = model.bns[int(e.via.split(".")[1])]
        else:
            bn = None
        mods = list(mod) if isinstance(mod, nn.Sequential) else [mod]
        if e.dst == "output" and not dense:
            mods = [nn.Flatten()] + mods if len(shapes[e.src]) > 1 else mods
        elif dense and e.src != "input" and e.dst != "output":
            mods = [nn.Unflatten(1, model_shapes[e.src])] + mods
        src, shape = b.chain(outs[e.src], mods + ([bn] if bn is not None else []), e.via, shapes[e.src], dense=dense)
        if dense and e.dst != "output":
            model_shapes[e.dst] = _shape_after(mods + ([bn] if bn is not None else []),
                                               model_shapes[e.src] if e.src == "input" else (math.prod(model_shapes[e.src]),),
                                               b.dtype)
        if e.dst == "output":
            b.edges.append((src, "output"))
            out_shape = shape
            continue
        if e.dst not in pops:
            pops[e.dst] = b.neuron(e.dst, shape, p.threshold, p.leak, p.reset, ge=True)
            shapes[e.dst], outs[e.dst] = shape, pops[e.dst][1]
        b.edges.append((src, pops[e.dst][0]))
    for e in fb:
        if e.delay != 1:
            raise NIRExportError(f"feedback edge {e.src}->{e.dst} has delay {e.delay}; bioprop writes cycles with one step of delay only")
        op = model.get_submodule(e.via)
        if not isinstance(op, SpectralNormOperator):
            raise NIRExportError(f"feedback {e.via}: {type(op).__name__} is not a SpectralNormOperator")
        src, shape = b.operator(outs[e.src], op, e.via, shapes[e.src], dense=dense)
        if shape != shapes[e.dst]:
            raise NIRExportError(f"feedback {e.via}: output {shape} does not match {e.dst} {shapes[e.dst]}")
        b.edges.append((src, pops[e.dst][0]))
    return {"reduce": "leak_weighted_mean", "leak": p.leak}, out_shape


def to_nir(model: nn.Module, dt: float = DEFAULT_DT, dense_limit: Optional[int] = 1 << 26,
           name: Optional[str] = None, config: Optional[Dict[str, Any]] = None):
    """The NIR graph (``nir.NIRGraph``) of a bioprop spiking ``model`` in evaluation mode.

    Covered: ``spiking_mlp``, ``spiking_convnet`` (``pool='avg'``), the TSSL-BP networks and the
    feedback SNNs (f400, f64c5, alexnet_f, cifarnet_f). ``dt``: the time step the NIR constants
    are written for (see the module docstring); ``dense_limit``: most weights of the dense matrix
    that stands for a transposed convolution. ``name``/``config``: the registered model and its
    config, for models not built by :func:`bioprop.create_model` (which records both).
    """
    nir = _nir()
    name = name or getattr(model, "model_name", None)
    config = config if config is not None else getattr(model, "model_config", None)
    if name is None or config is None:
        raise NIRExportError("to_nir needs the registered model name and config: build the model with "
                             "bioprop.create_model, or pass name= and config=")
    if not dt > 0:
        raise NIRExportError(f"dt must be > 0, got {dt}")
    dtype = next(model.parameters()).dtype
    b = _Builder(dt, dtype, dense_limit)
    if isinstance(model, TSSLNet):
        readout, out_shape = _export_tssl(model, b)
    elif isinstance(model, SpikingFeedforwardNet):
        readout, out_shape = _export_feedforward(model, b)
    elif satisfies(model, EquilibriumModel) and hasattr(model, "graph"):
        readout, out_shape = _export_feedback(model, b)
    else:
        raise NIRExportError(f"{name}: no NIR export for {type(model).__name__}; covered: spiking_mlp, spiking_convnet, "
                             "the TSSL-BP networks and the feedback SNNs (f400, f64c5, alexnet_f, cifarnet_f)")
    b.nodes["input"] = nir.Input(input_type={"input": np.array(model.in_shape)})
    b.nodes["output"] = nir.Output(output_type={"output": np.array(out_shape)})
    info = {"format": FORMAT, "model": name, "config": config, "dt": dt, "time_steps": int(model.time_steps),
            "readout": readout, "dtype": str(dtype).replace("torch.", "")}
    # scalars as 1-element arrays (HDF5 cannot compress scalar datasets); from_nir restores the shapes
    state = {k: _np(v).reshape(-1) if v.dim() == 0 else _np(v) for k, v in model.state_dict().items()}
    meta = {"bioprop": json.dumps(info), "bioprop_state": state}
    return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=meta, type_check=False)


def save_nir(model_or_graph: Any, path: Union[str, Path], **kwargs: Any) -> Path:
    """Write a model (exported with :func:`to_nir`) or a graph to an ``.nir`` (HDF5) file."""
    nir = _nir()
    graph = model_or_graph if isinstance(model_or_graph, nir.NIRGraph) else to_nir(model_or_graph, **kwargs)
    path = Path(path)
    nir.write(path, graph)
    return path


def load_nir(path: Union[str, Path]):
    """Read an ``.nir`` file (the graph; :func:`from_nir` builds the model)."""
    return _nir().read(str(path), type_check=False)


def _info(graph) -> Dict[str, Any]:
    meta = getattr(graph, "metadata", None) or {}
    raw = meta.get("bioprop") if isinstance(meta, dict) else None
    if raw is None:
        raise NIRExportError("this NIR graph was not written by bioprop.export.to_nir (no 'bioprop' metadata): "
                             "from_nir rebuilds bioprop models only; run_nir runs other graphs of supported nodes")
    info = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    if info.get("format") != FORMAT:
        raise NIRExportError(f"bioprop NIR format {info.get('format')} is not {FORMAT}, the one this version reads")
    return info


def from_nir(graph: Any, check: bool = True, rtol: float = 1e-5, atol: float = 1e-7) -> nn.Module:
    """The bioprop model of a graph written by :func:`to_nir` (a graph or an ``.nir`` path), in eval mode.

    With ``check`` (default), the graph's nodes must equal a re-export of the rebuilt model (to
    ``rtol``/``atol``): a graph whose nodes were changed after export is refused, since the stored
    parameters it was built from would no longer be the ones the graph computes with.
    """
    nir = _nir()
    if isinstance(graph, (str, Path)):
        graph = load_nir(graph)
    info = _info(graph)
    model = create_model(info["model"], **info["config"])
    state = graph.metadata.get("bioprop_state")
    if not isinstance(state, dict):
        raise NIRExportError("the graph's 'bioprop_state' metadata is missing")
    dtype = getattr(torch, info.get("dtype", "float32"))
    model = model.to(dtype)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise NIRExportError(f"the graph's stored state lacks {', '.join(missing[:5])}: it does not match model {info['model']}")
    model.load_state_dict({k: torch.as_tensor(np.asarray(state[k])).to(own[k].dtype).reshape(own[k].shape)
                           for k in own})
    model.eval()
    if check:
        again = to_nir(model, dt=info["dt"], dense_limit=None, name=info["model"], config=info["config"])
        _compare_graphs(graph, again, rtol, atol)
    return model


_FIELDS = ("weight", "bias", "tau", "tau_mem", "tau_syn", "r", "v_leak", "v_threshold", "v_reset", "w_in", "threshold",
           "scale", "kernel_size", "stride", "padding", "dilation", "groups")


def _compare_graphs(g, ref, rtol: float, atol: float) -> None:
    if set(g.nodes) != set(ref.nodes):
        raise NIRExportError(f"graph nodes {sorted(set(g.nodes) ^ set(ref.nodes))[:5]} differ from the model's export")
    if sorted(map(tuple, g.edges)) != sorted(map(tuple, ref.edges)):
        raise NIRExportError("the graph's edges differ from the model's export: it was changed after export")
    for k, node in g.nodes.items():
        r = ref.nodes[k]
        if type(node).__name__ != type(r).__name__:
            raise NIRExportError(f"node {k}: {type(node).__name__} where the model exports {type(r).__name__}")
        for f in _FIELDS:
            if hasattr(r, f) and getattr(r, f) is not None:
                a, e = np.asarray(getattr(node, f), dtype=np.float64), np.asarray(getattr(r, f), dtype=np.float64)
                if a.shape != e.shape or not np.allclose(a, e, rtol=rtol, atol=atol):
                    raise NIRExportError(f"node {k}: {f} differs from the model rebuilt from the graph's stored state "
                                         "(the graph was changed after export; bioprop cannot rebuild folded "
                                         "BatchNorm or spectral-norm parameters from changed weights)")


# -- a discrete-time reference runner -----------------------------------------------------------
def _graph_order(graph) -> Tuple[List[str], Dict[str, List[Tuple[str, bool]]]]:
    """Nodes in evaluation order from ``input`` and, per node, its sources with a flag that marks
    back edges (closing a cycle: read with one step of delay)."""
    succ: Dict[str, List[str]] = {k: [] for k in graph.nodes}
    for a, c in graph.edges:
        succ[a].append(c)
    inputs = [k for k, n in graph.nodes.items() if type(n).__name__ == "Input"]
    state: Dict[str, int] = {}
    post: List[str] = []
    back = set()

    def dfs(u: str) -> None:
        state[u] = 1
        for v in succ[u]:
            if state.get(v) == 1:
                back.add((u, v))
            elif v not in state:
                dfs(v)
        state[u] = 2
        post.append(u)

    for i in inputs:
        dfs(i)
    order = post[::-1]
    preds: Dict[str, List[Tuple[str, bool]]] = {k: [] for k in graph.nodes}
    for a, c in graph.edges:
        preds[c].append((a, (a, c) in back))
    return order, preds


def run_nir(graph: Any, x: torch.Tensor, dt: Optional[float] = None, reduce: bool = True) -> torch.Tensor:
    """Run a NIR graph on ``x[T, B, ...]`` in discrete time: every neuron ODE advanced by one
    forward-Euler step of ``dt`` per time step (default: the graph's ``bioprop.dt``), every cycle
    read with one step of delay. Returns the per-step output ``[T, B, ...]`` or, with ``reduce``
    (graphs written by :func:`to_nir`), the logits ``[B, ...]``.

    Nodes: Input, Output, Affine, Linear, Scale, Conv2d, Flatten, SumPool2d, AvgPool2d, LI, I,
    LIF, IF, CubaLIF, Threshold; a neuron fires at ``v >= theta`` when its metadata says
    ``fire_at_equality``, else at ``v > theta``. This is the reference the tests hold the export
    to; it is not a fast simulator."""
    nir = _nir()
    if isinstance(graph, (str, Path)):
        graph = load_nir(graph)
    info = None
    try:
        info = _info(graph)
    except NIRExportError:
        if reduce or dt is None:
            raise
    dt = float(dt if dt is not None else info["dt"])
    order, preds = _graph_order(graph)
    T = x.shape[0]
    dtype = x.dtype
    out_prev: Dict[str, torch.Tensor] = {}
    states: Dict[str, Dict[str, torch.Tensor]] = {k: {} for k in graph.nodes}
    outputs = []
    P = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=x.device)  # noqa: E731
    for t in range(T):
        cur: Dict[str, torch.Tensor] = {}
        for k in order:
            node = graph.nodes[k]
            kind = type(node).__name__
            if kind == "Input":
                cur[k] = x[t]
                continue
            total = None
            for a, is_back in preds[k]:
                v = (out_prev.get(a) if is_back else cur.get(a))
                if v is None:
                    continue  # a delayed input before its first step: zero
                total = v if total is None else total + v
            if total is None:
                raise NIRExportError(f"run_nir: node {k} has no input at step {t}")
            cur[k] = _apply_node(k, kind, node, total, states[k], dt, P)
        outputs.append(cur[[k for k, n in graph.nodes.items() if type(n).__name__ == "Output"][0]])
        out_prev = cur
    out = torch.stack(outputs)
    if not reduce:
        return out
    return reduce_readout(out, info["readout"])


def reduce_readout(out: torch.Tensor, readout: Dict[str, Any]) -> torch.Tensor:
    """Logits from the per-step graph output ``out[T, B, ...]`` (the ``bioprop.readout`` reduction)."""
    kind = readout["reduce"]
    T = out.shape[0]
    if kind == "mean":
        return out.mean(0)
    if kind == "leak_weighted_mean":
        lk = float(readout["leak"])
        acc, norm = torch.zeros_like(out[0]), 0.0
        for t in range(T):
            acc, norm = lk * acc + out[t], lk * norm + 1.0
        return acc / norm
    if kind == "psp_sum":
        q = 1 - 1 / float(readout["tau_s"])
        a, tot = None, torch.zeros_like(out[0])
        for t in range(T):
            a = out[t] / float(readout["tau_s"]) if a is None else q * a + out[t] / float(readout["tau_s"])
            tot = tot + a
        return tot
    raise NIRExportError(f"unknown readout reduction {kind!r}")


def _fire(v: torch.Tensor, th: torch.Tensor, node) -> torch.Tensor:
    ge = bool(np.asarray((node.metadata or {}).get("fire_at_equality", False)))
    return (v >= th).to(v.dtype) if ge else (v > th).to(v.dtype)


def _apply_node(k: str, kind: str, node, x: torch.Tensor, st: Dict[str, torch.Tensor], dt: float, P) -> torch.Tensor:
    if kind == "Output":
        return x
    if kind == "Affine":
        return F.linear(x, P(node.weight), P(node.bias))
    if kind == "Linear":
        return F.linear(x, P(node.weight))
    if kind == "Scale":
        return x * P(node.scale)
    if kind == "Flatten":
        return x.flatten(1 + node.start_dim, node.end_dim if node.end_dim < 0 else 1 + node.end_dim)
    if kind == "Conv2d":
        pad = node.padding
        return F.conv2d(x, P(node.weight), P(node.bias), tuple(np.atleast_1d(node.stride).tolist()) if np.size(node.stride) > 1 else int(node.stride),
                        pad if isinstance(pad, str) else (tuple(np.atleast_1d(pad).tolist()) if np.size(pad) > 1 else int(pad)),
                        tuple(np.atleast_1d(node.dilation).tolist()) if np.size(node.dilation) > 1 else int(node.dilation), int(node.groups))
    if kind in ("SumPool2d", "AvgPool2d"):
        ks, s, p = (tuple(int(v) for v in np.atleast_1d(a)) for a in (node.kernel_size, node.stride, node.padding))
        return F.avg_pool2d(x, ks, s, p, divisor_override=1 if kind == "SumPool2d" else None)
    if kind == "Threshold":
        return _fire(x, P(node.threshold), node)
    v = st.get("v", torch.zeros_like(x))
    if kind in ("LI", "LIF"):
        v = v + (dt / P(node.tau)) * (P(node.v_leak) - v + P(node.r) * x)
    elif kind in ("I", "IF"):
        v = v + dt * P(node.r) * x
    elif kind == "CubaLIF":
        i = st.get("i", torch.zeros_like(x))
        i = i + (dt / P(node.tau_syn)) * (-i + P(node.w_in) * x)
        st["i"] = i
        v = v + (dt / P(node.tau_mem)) * (P(node.v_leak) - v + P(node.r) * i)
    else:
        raise NIRExportError(f"run_nir: node {k} of type {kind} is not supported")
    if kind in ("LI", "I"):
        st["v"] = v
        return v
    s = _fire(v, P(node.v_threshold), node)
    reset = P(node.v_reset) if node.v_reset is not None else torch.zeros_like(v)
    st["v"] = torch.where(s > 0, reset, v)
    return s


def export_run(run: Union[str, Path], out: Union[str, Path], format: str = "nir", dt: float = DEFAULT_DT,
               dense_limit: Optional[int] = 1 << 26) -> Path:
    """Export the model of a run directory (its last checkpoint) or of a checkpoint directory to
    ``out`` (``bioprop export RUN_DIR --format nir OUT.nir``)."""
    if format != "nir":
        raise NIRExportError(f"unknown export format {format!r}; available: nir")
    from ..train.checkpoint import latest_checkpoint, load_checkpoint, load_weights
    from ..train.config import RunConfig

    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise FileNotFoundError(f"{run}: no bioprop checkpoint found (expected a run directory or a "
                                "checkpoints/epoch_NNNN directory)")
    state = load_checkpoint(ckpt)
    raw = dict(state["config"])
    raw["train"] = {**raw.get("train", {}), "device": "cpu"}
    config = RunConfig.from_dict(raw)
    model = _build_model(config)
    load_weights(model, ckpt)
    model.eval()
    return save_nir(to_nir(model, dt=dt, dense_limit=dense_limit), out)


def _build_model(config) -> nn.Module:
    """The run's model as its rule prepared it (a layer rule's B-carrying layers included)."""
    from ..rules import create_rule

    kw = dict(config.model)
    model = create_model(kw.pop("name"), **kw)
    rk = dict(config.rule)
    return create_rule(rk.pop("name"), **rk).prepare(model)
