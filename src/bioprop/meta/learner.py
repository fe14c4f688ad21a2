"""The meta-learner: an outer loop that learns the plasticity rule's coefficients theta.

Each episode (Shervani-Tabar & Rosenbaum 2023; REFERENCES.md section 6):

1. draw fresh W and B (Xavier uniform) and M classes x (K + Q) images of the meta-train classes;
2. present the M*K training images one at a time, each a step of the inner rule
   ``W <- W + sum_r theta_r F_r`` (:class:`~bioprop.meta.plasticity.Plasticity`);
3. meta-loss ``= CE(f(x_query; W_final), y_query) + lambda * sum_r |theta_r|``;
4. one Adam step on theta, with the meta-gradient taken through the whole unrolled inner loop
   (optionally gradient-checkpointed every ``inner_checkpoint`` steps).

A meta-step takes ``meta.meta_batch`` consecutive episodes (default 1: the reference's one
episode a step) and the mean of their meta-losses. Under ``torchrun --nproc_per_node=N -m bioprop
meta ...`` (gloo, CPU) the meta-step's episodes are split over the ranks (contiguous shares,
:func:`bioprop.distributed.shard_range`); episodes are functions of their index, so the union over
ranks is the single process's meta-batch, and the meta-gradients are summed over ranks by
:func:`bioprop.distributed.all_reduce_grads`: N processes equal one process with the same
``meta_batch`` (to float rounding). The held-out evaluations are split over the ranks likewise
and gathered in episode order (the same figures as one process). Rank 0 alone writes the run
directory, metrics, checkpoints and the progress bar.

Unlike the reference, which has no meta-test, the classes of ``pool.heldout`` never appear in
meta-training; :meth:`MetaLearner.evaluate` runs the rule (no meta-gradient) on episodes of
those classes and reports query accuracy, and the same on fresh episodes of the meta-train
classes. Episodes are functions of ``(seed, phase, index)`` (:mod:`.episodes`), so a resumed run
is bit-identical on the CPU and every arm is meta-tested on the same episodes.

A run directory holds ``config.yaml``, ``metrics.jsonl`` (one line an episode: meta-loss, query
CE and accuracy, theta per term, per-layer angle between the error signal through B and
backprop's error on the query; plus ``kind: eval`` lines), ``checkpoints/`` (theta and the Adam
state, atomic) and ``result.json`` (the final meta-test).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as D
from ..config import from_dict, to_dict
from .episodes import ClassPool, Episode, episode_generator
from .plasticity import Plasticity, PlasticityConfig, angle_deg, error_signals

__all__ = ["PoolConfig", "MetaConfig", "MetaRunConfig", "MetaLearner", "load_meta_config"]


@dataclass
class PoolConfig:
    """The class pool: the classes of ``datasets`` (registered names, labels offset in list order)
    from their ``split``; ``heldout``: pool labels never meta-trained on (the meta-test classes)."""

    datasets: List[str] = field(default_factory=lambda: ["mnist", "fashion_mnist"])
    split: Literal["train", "test"] = "train"
    heldout: List[int] = field(default_factory=lambda: [7, 8, 9, 17, 18, 19])
    data_dir: Optional[str] = None


@dataclass
class MetaConfig:
    """The outer loop. ``M`` classes x ``K`` training images an episode, ``Q`` query images a
    class; ``lr``: Adam on theta; ``lamb``: L1 weight on theta; ``theta0``: the pseudo-gradient's
    starting coefficient (others start at 0); ``episodes``: meta-training episodes (0 = evaluate
    the starting rule only: FA with ``feedback: fixed``, BP with ``feedback: sym``);
    ``inner_checkpoint``: gradient-checkpoint every n inner steps (0 = off); ``eval_every`` /
    ``eval_episodes``: held-out evaluation during training; ``test_episodes``: the final
    meta-test (held-out and meta-train classes); ``save_every``: checkpoint period (episodes).
    ``meta_batch``: episodes a meta-step (their mean meta-loss, one Adam step; ``episodes`` must be
    a multiple of it; under torchrun they are shared by the processes, at least one each); the
    periods ``eval_every`` / ``save_every`` fire at the first meta-step that reaches a multiple."""

    episodes: int = 600
    M: int = 5
    K: int = 50
    Q: int = 10
    lr: float = 1e-3
    lamb: float = 0.0
    theta0: float = 1e-3
    inner_checkpoint: int = 0
    eval_every: int = 50
    eval_episodes: int = 10
    test_episodes: int = 50
    save_every: int = 25
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    #: a non-finite meta-loss skips that episode's Adam step (logged ``skipped: true``) instead of stopping
    skip_nonfinite: bool = False
    #: episodes a meta-step (mean meta-loss; shared by the processes under torchrun)
    meta_batch: int = 1
    #: clip the meta-gradient of theta to this Euclidean norm before the Adam step (0 = off, the
    #: reference's choice). Adam divides by its running RMS, so this damps a spike relative to the
    #: history but does not bound Adam's first steps (each about ``lr`` times the gradient's sign).
    clip_grad: float = 0.0
    #: per-term meta step size. ``same`` (the reference's): Adam moves every theta_r by about ``lr``
    #: an episode, whatever the scale of its term. ``auto``: multiply term r's Adam step by
    #: ``s_r = min(1, |g_0| / |g_r|)``, with ``g`` the meta-gradient of the first meta-training
    #: episode at the starting theta, so that no term's first step changes the meta-loss (to first
    #: order) more than the pseudo-gradient's does; ``s`` is kept in the checkpoint.
    term_lr: Literal["same", "auto"] = "same"


@dataclass
class MetaRunConfig:
    pool: PoolConfig = field(default_factory=PoolConfig)
    plasticity: PlasticityConfig = field(default_factory=PlasticityConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    run_dir: Optional[str] = None
    progress: Optional[bool] = None

    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)


def _set_dotted(d: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise ValueError(f"override {key}: {p} is not a section")
    cur[parts[-1]] = value


def load_meta_config(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> MetaRunConfig:
    """A :class:`MetaRunConfig` from a YAML file plus ``section.key=value`` overrides (values read
    as YAML); unknown keys are a :class:`~bioprop.config.ConfigError` naming the valid ones."""
    import yaml

    data: Dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"meta config {p} not found")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p}: a meta config is a mapping of sections (pool, plasticity, meta), got {type(data).__name__}")
    for o in overrides:
        k, sep, v = o.partition("=")
        if not sep:
            raise ValueError(f"override {o!r} is not section.key=value")
        _set_dotted(data, k.strip(), yaml.safe_load(v))
    return from_dict(MetaRunConfig, data)


class _Theta(nn.Module):
    """Holds theta so that the library's atomic checkpoint writer can store it."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(theta)


class MetaLearner:
    """Meta-train the coefficients of a plasticity rule on a class pool.

    >>> learner = MetaLearner(load_meta_config("configs/meta_plasticity_pool.yaml"))   # doctest: +SKIP
    >>> result = learner.fit()                                                          # doctest: +SKIP
    """

    def __init__(self, config: MetaRunConfig, pool: Optional[ClassPool] = None,
                 run_dir: Optional[Union[str, Path]] = None, resume: bool = False):
        self.config = config
        m = config.meta
        for name in ("M", "K", "Q"):
            if getattr(m, name) < 1:
                raise ValueError(f"meta.{name} must be >= 1, got {getattr(m, name)}")
        if m.episodes < 0 or m.lr <= 0 or m.lamb < 0 or m.inner_checkpoint < 0:
            raise ValueError(f"meta: episodes >= 0, lr > 0, lamb >= 0, inner_checkpoint >= 0 needed; got "
                             f"episodes={m.episodes}, lr={m.lr}, lamb={m.lamb}, inner_checkpoint={m.inner_checkpoint}")
        if not math.isfinite(m.theta0):
            raise ValueError(f"meta.theta0 must be finite, got {m.theta0}")
        if m.meta_batch < 1 or m.episodes % m.meta_batch:
            raise ValueError(f"meta.meta_batch must be >= 1 and divide meta.episodes; got meta_batch={m.meta_batch}, "
                             f"episodes={m.episodes}")
        D.init_from_env("cpu")  # torchrun: join the process group (gloo); else nothing
        if m.meta_batch < D.world_size():
            raise ValueError(f"meta.meta_batch={m.meta_batch} episodes a meta-step cannot be shared by "
                             f"{D.world_size()} processes: set meta.meta_batch >= {D.world_size()} (a multiple of it "
                             "keeps every process busy)")
        self.dtype = torch.float64 if m.dtype == "float64" else torch.float32
        if pool is None:
            p = config.pool
            pool = ClassPool.from_datasets(p.datasets, p.split, p.heldout, p.data_dir)
        self.pool = pool
        self.rule = Plasticity(config.plasticity, pool.in_features, pool.num_classes)
        self.holder = _Theta(self.rule.initial_theta(m.theta0, self.dtype))
        self.opt = torch.optim.Adam(self.holder.parameters(), lr=m.lr)
        self.episode = 0
        #: per-term multiplier of Adam's step (``meta.term_lr``); None until the first episode sets it
        self.term_scale: Optional[torch.Tensor] = None
        if m.clip_grad < 0:
            raise ValueError(f"meta.clip_grad must be >= 0 (0 = off), got {m.clip_grad}")
        rd = run_dir if run_dir is not None else config.run_dir
        self.run_dir = Path(rd) if rd else None
        if resume:
            if self.run_dir is None:
                raise ValueError("resume needs a run directory (run_dir)")
            self._resume()

    @property
    def theta(self) -> torch.Tensor:
        return self.holder.theta

    # ---- one episode -------------------------------------------------------------------------
    def adapt(self, episode: Episode, theta: torch.Tensor, generator: torch.Generator,
              inner_checkpoint: int = 0):
        """Fresh (W, B) from ``generator``, then the inner loop over the episode's training images."""
        W, B = self.rule.init_weights(generator, self.dtype)
        return self.rule.run(W, B, episode.x_train, episode.y_train, theta, inner_checkpoint)

    def query_loss(self, W, episode: Episode):
        _, logits = self.rule.forward(W, episode.x_query)
        return F.cross_entropy(logits, episode.y_query), logits

    def meta_loss(self, theta: torch.Tensor, phase: str, index: int, inner_checkpoint: Optional[int] = None):
        """``(meta-loss, CE, logits, W, B, episode)`` of episode ``index`` of ``phase`` at ``theta``."""
        m = self.config.meta
        g = episode_generator(m.seed, phase, index)
        ep = self.pool.episode(g, phase, m.M, m.K, m.Q, self.dtype)
        W, B = self.adapt(ep, theta, g, m.inner_checkpoint if inner_checkpoint is None else inner_checkpoint)
        ce, logits = self.query_loss(W, ep)
        return ce + m.lamb * theta.abs().sum(), ce, logits, W, B, ep

    def angles(self, W, B, episode: Episode) -> List[float]:
        """Per hidden layer l = 1..L-1: angle (degrees) between the query-mean error through B and
        backprop's (through W), as the reference's ``meta_stats``."""
        with torch.no_grad():
            acts, logits = self.rule.forward(W, episode.x_query)
            keys = self.rule.keys
            e = error_signals(acts, logits, episode.y_query, self.rule.feedback_of(W, B), self.rule.config.beta)
            e_bp = error_signals(acts, logits, episode.y_query, [W[k] for k in keys], self.rule.config.beta)
            return [angle_deg(e[l].mean(0), e_bp[l].mean(0)) for l in range(1, len(keys))]

    def train_episode(self) -> Dict[str, Any]:
        """One meta-step: the ``meta.meta_batch`` episodes ``episode .. episode + meta_batch - 1``
        (under torchrun this rank's share of them), the gradient of their mean meta-loss (summed
        over ranks), one Adam step; returns its metrics line (means over the meta-batch)."""
        mb = self.config.meta.meta_batch
        theta_used = self.theta.detach().clone()
        first, stop = D.shard_range(mb)
        self.opt.zero_grad(set_to_none=True)
        rows: List[List[float]] = []  # per episode: meta-loss, CE, accuracy, angles
        for i in range(self.episode + first, self.episode + stop):
            loss, ce, logits, W, B, ep = self.meta_loss(self.theta, "train", i)
            if not torch.isfinite(loss):  # no backward; the step is skipped or the run stops below
                rows.append([loss.item()])
                continue
            (loss if mb == 1 else loss / mb).backward()
            acc = (logits.argmax(1) == ep.y_query).double().mean().item()
            rows.append([loss.item(), ce.item(), acc] + self.angles({k: v.detach() for k, v in W.items()},
                                                                   {k: v.detach() for k, v in B.items()}, ep))
        rows = [r for part in D.gather_objects(rows) for r in part]  # every rank: all episodes, in order
        bad = [(self.episode + i + 1, r[0]) for i, r in enumerate(rows) if not math.isfinite(r[0])]
        if bad and self.config.meta.skip_nonfinite:
            self.episode += mb
            return {"kind": "train", "episode": self.episode, "skipped": True, "meta_loss": None, "query_ce": None,
                    "query_acc": 0.0, "theta": dict(zip(self.rule.term_names, theta_used.tolist()))}
        if bad:
            raise FloatingPointError(f"meta-loss is {bad[0][1]} at episode {bad[0][0]} (theta "
                                     f"{theta_used.tolist()}): lower meta.lr or meta.theta0")
        D.all_reduce_grads([self.theta], weight=1.0)  # torchrun: sum of the ranks' shares of the mean
        grad = self.theta.grad.detach().clone()
        self._step(grad)
        self.episode += mb
        mean = [sum(r[j] for r in rows) / len(rows) for j in range(len(rows[0]))]
        line: Dict[str, Any] = {"kind": "train", "episode": self.episode, "meta_loss": mean[0],
                                "query_ce": mean[1], "query_acc": mean[2],
                                "theta": dict(zip(self.rule.term_names, theta_used.tolist())),
                                "theta_grad": dict(zip(self.rule.term_names, grad.tolist()))}
        for l, a in enumerate(mean[3:], start=1):
            line[f"angle_l{l}"] = a
        return line

    def _step(self, grad: torch.Tensor) -> None:
        """The Adam step on theta, with ``meta.clip_grad`` and ``meta.term_lr`` applied."""
        m = self.config.meta
        if m.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_([self.theta], m.clip_grad)
        if m.term_lr == "auto" and self.term_scale is None:
            g = grad.abs().double()
            self.term_scale = torch.where(g > 0, torch.clamp(g[0] / g, max=1.0), torch.ones_like(g)).to(self.dtype)
        before = self.theta.detach().clone()
        self.opt.step()
        if self.term_scale is not None:
            with torch.no_grad():
                self.theta.copy_(before + self.term_scale * (self.theta - before))

    @torch.no_grad()
    def evaluate(self, phase: str = "heldout", episodes: int = 10, theta: Optional[torch.Tensor] = None,
                 first: int = 0) -> Dict[str, Any]:
        """Mean query accuracy / CE / angles of the rule at ``theta`` over episodes ``first ..
        first + episodes - 1`` of ``phase`` (``heldout`` or ``train_classes``), no meta-update."""
        th = (self.theta if theta is None else theta).detach()
        accs, ces, angs = [], [], []
        a, b = D.shard_range(episodes)  # torchrun: this rank's share, gathered in episode order below
        for i in range(first + a, first + b):
            _, ce, logits, W, B, ep = self.meta_loss(th, phase, i, inner_checkpoint=0)
            accs.append((logits.argmax(1) == ep.y_query).double().mean().item())
            ces.append(ce.item())
            angs.append(self.angles(W, B, ep))
        if D.is_distributed():
            parts = D.gather_objects((accs, ces, angs))
            accs, ces, angs = ([v for p in parts for v in p[j]] for j in range(3))
        n = len(accs)
        mean = sum(accs) / n
        std = (sum((a - mean) ** 2 for a in accs) / max(1, n - 1)) ** 0.5
        out = {"phase": phase, "episodes": n, "acc": mean, "acc_std_over_episodes": std, "ce": sum(ces) / n}
        for l in range(len(angs[0])):
            out[f"angle_l{l + 1}"] = sum(a[l] for a in angs) / n
        return out

    # ---- run: checkpoints, metrics, resume ---------------------------------------------------
    def _ckpt_dir(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "checkpoints"

    def save(self) -> Optional[Path]:
        """Write a checkpoint (rank 0 alone under torchrun: every rank holds the same theta and Adam state)."""
        if self.run_dir is None or not D.is_main():
            return None
        from ..train.checkpoint import save_checkpoint

        state = {"optimizer": self.opt.state_dict(), "episode": self.episode, "config": self.config.to_dict(),
                 "world_size": D.world_size(),
                 "term_scale": None if self.term_scale is None else self.term_scale.tolist()}
        return save_checkpoint(self._ckpt_dir(), self.episode, self.holder, state)

    def _resume(self) -> None:
        from ..train.checkpoint import latest_checkpoint, load_checkpoint

        ckpt = latest_checkpoint(self._ckpt_dir()) if self._ckpt_dir().is_dir() else None
        if ckpt is None:
            return  # nothing saved yet: start from episode 0
        state = load_checkpoint(ckpt, self.holder)
        stored = state.get("config", {})
        if stored.get("plasticity") != self.config.to_dict()["plasticity"]:
            raise ValueError(f"{ckpt}: saved with plasticity {stored.get('plasticity')}, but the config now says "
                             f"{self.config.to_dict()['plasticity']}; resume with the same config")
        self.opt.load_state_dict(state["optimizer"])
        self.episode = int(state["episode"])
        n = int(state.get("world_size", 1))
        if n != D.world_size():
            warnings.warn(f"{ckpt}: written by {n} process(es), resumed by {D.world_size()}: the meta-gradients are "
                          "summed in another order, so the run continues equal to float rounding, not bit-identically "
                          f"(torchrun --nproc_per_node={n} resumes it bit-identically)", RuntimeWarning, stacklevel=3)
        if state.get("term_scale") is not None:
            self.term_scale = torch.tensor(state["term_scale"], dtype=self.dtype)
        # drop metric lines written after the checkpoint (the killed part of the run is redone)
        mf = self.run_dir / "metrics.jsonl"
        if mf.is_file() and D.is_main():
            keep = [l for l in mf.read_text().splitlines() if l.strip() and json.loads(l)["episode"] <= self.episode]
            mf.write_text("".join(l + "\n" for l in keep))

    def _write(self, line: Dict[str, Any]) -> None:
        if self.run_dir is not None and D.is_main():  # torchrun: rank 0 alone
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")

    def _progress(self) -> bool:
        p = self.config.progress
        return D.is_main() and (sys.stderr.isatty() if p is None else p)

    def fit(self) -> Dict[str, Any]:
        """Meta-train up to ``meta.episodes``, then meta-test; returns (and writes) the result."""
        import yaml

        m = self.config.meta
        if self.run_dir is not None and D.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        bar = None
        if self._progress():
            from tqdm import tqdm

            bar = tqdm(total=m.episodes, initial=self.episode, desc="meta", dynamic_ncols=True)
        if self.episode == 0 and m.eval_every:
            self._write({"kind": "eval", "episode": 0, **self.evaluate("heldout", m.eval_episodes)})
        t0 = time.perf_counter()
        while self.episode < m.episodes:
            before = self.episode
            line = self.train_episode()
            self._write(line)
            if m.eval_every and self.episode // m.eval_every > before // m.eval_every:
                self._write({"kind": "eval", "episode": self.episode, **self.evaluate("heldout", m.eval_episodes)})
            if m.save_every and (self.episode // m.save_every > before // m.save_every or self.episode == m.episodes):
                self.save()
            if bar is not None:
                bar.update(self.episode - before)
                bar.set_postfix(loss=f"{line['meta_loss'] or float('nan'):.3f}", acc=f"{line['query_acc']:.2f}")
        if bar is not None:
            bar.close()
        train_s = time.perf_counter() - t0
        result: Dict[str, Any] = {
            "episodes": self.episode, "seed": m.seed, "terms": self.rule.term_names,
            "feedback": self.config.plasticity.feedback,
            "theta": dict(zip(self.rule.term_names, self.theta.detach().tolist())),
            "term_lr_scale": None if self.term_scale is None else dict(zip(self.rule.term_names, self.term_scale.tolist())),
            "heldout": self.evaluate("heldout", m.test_episodes),
            "train_classes": self.evaluate("train_classes", m.test_episodes),
            "train_seconds_this_process": train_s,
        }
        if self.run_dir is not None and D.is_main():
            (self.run_dir / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        return result
