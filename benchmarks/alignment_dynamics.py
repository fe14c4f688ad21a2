"""Per-layer dynamics of a Two Routes rule over the first steps of a training run: where and why
the backward kernels B stop tracking, or blow up.

    python benchmarks/alignment_dynamics.py --rule aa --steps 900 --data-dir .data/cifar \
        [--config configs/alignment_resnet20_cifar10.yaml] [--every 10] [--out FILE] [overrides...]

Every ``--every`` steps one JSON line: the loss, the learning rate, and for each converted layer
the norms of W and B, their cosine, the mean square of the layer's input, and B's **stability
number** ``lr * lambda_max(H)``, where ``H`` is the Hessian of the rule's regulariser R with
respect to B (``reg_scale`` included; R is quadratic in B, so ``H V = dR/dB(V) - dR/dB(0)``,
found by power iteration on a 16-sample slice of the batch). Under SGD with heavy-ball momentum
``mu`` B's own update is unstable once that number exceeds ``2 (1 + mu)`` (``lr`` and ``mu`` are
those of B's optimizer: the model's, or ``rule.b_optimizer=sgd``'s; none under ``adam``). For ``aa``, ``H`` is
``2 alpha E[p p^T]`` over the input patches ``p``, so the number grows with the activations.
Lines go to ``benchmarks/results/alignment_dynamics.jsonl`` with the device, torch version,
commit and date. CPU-sized: the first epoch of ResNet-20 takes about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from common import ROOT, environment, write_lines

from bioprop.rules.alignment import fb_layers, regularizer_curvature  # noqa: E402
from bioprop.train import Trainer, load_config  # noqa: E402


def stability(rule, layer, x: torch.Tensor, lr: float) -> float:
    """``lr * lambda_max`` of d2R/dB2 (``reg_scale`` included) on the inputs ``x``."""
    c = rule.config
    return lr * c.reg_scale * regularizer_curvature(rule.name, layer, x, rule.alpha, rule.beta, rule.gamma,
                                                    c.position_mean, iters=8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rule", default="aa")
    p.add_argument("--config", default=str(ROOT / "configs" / "alignment_resnet20_cifar10.yaml"))
    p.add_argument("--data-dir", required=True)
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "alignment_dynamics.jsonl"))
    p.add_argument("--tie", default="", help="comma-separated layers whose B is held equal to W (exact BP "
                   "through them), to find which layers' misalignment drives a divergence")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. rule.reg_scale=0.25 optim.lr=0.05")
    a = p.parse_args()
    ov = [f"rule={a.rule}", f"data.data_dir={a.data_dir}", "train.out_dir=/tmp/bioprop_alignment_dynamics",
          f"train.name={a.rule}", "rule.angle_every=0"] + a.overrides
    cfg = load_config(a.config, ov)
    trainer = Trainer(cfg)
    model, rule, opt = trainer.model, trainer.rule, trainer.optimizer
    model.train()
    layers = list(fb_layers(model))
    tie_names = sorted(set(filter(None, a.tie.split(","))))
    tied = [layer for name, layer in layers if name in tie_names]
    if len(tied) != len(tie_names):
        raise SystemExit(f"--tie {a.tie}: unknown layer; the converted layers are {[n for n, _ in layers]}")

    def tie() -> None:
        with torch.no_grad():
            for layer in tied:
                layer.weight_b.copy_(layer.weight)

    tie()
    inputs = {}
    for name, layer in layers:
        layer.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0].detach()))
    own = getattr(rule.config, "b_optimizer", "model")
    # B's learning rate and momentum: the model optimizer's, or those of B's own optimizer (sgd);
    # under adam there is no fixed step size, so no stability number
    momentum = rule.config.b_momentum if own == "sgd" else opt.param_groups[0].get("momentum", 0.0)
    env = {**environment(trainer.device), "bench": "alignment_dynamics", "config": a.config, "overrides": ov,
           "tied": tie_names,
           "seed": cfg.train.seed, "instability_threshold": 2 * (1 + momentum)}
    rows, epoch = [], 0
    batches = iter(trainer.dataset.loader("train", trainer.device, seed=cfg.train.seed, epoch=epoch))
    for step in range(a.steps):
        try:
            x, y = next(batches)
        except StopIteration:
            epoch += 1
            batches = iter(trainer.dataset.loader("train", trainer.device, seed=cfg.train.seed, epoch=epoch))
            x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        out = rule.step(model, x, y, F.cross_entropy)
        loss = float(out.loss)
        if (step + 1) % a.every == 0 or not math.isfinite(loss):
            lr = opt.param_groups[0]["lr"]
            b_lr = {"model": lr, "sgd": getattr(rule.config, "b_lr", None)}.get(own)
            row = {**env, "step": step + 1, "loss": loss, "lr": lr, "layers": {}}
            for name, layer in layers:
                W, B = layer.weight.detach(), layer.weight_b.detach()
                xin = inputs[name]
                if getattr(rule.config, "batch_center", False):  # R sees the batch-centred input
                    xin = xin - xin.mean(0, keepdim=True)
                xin = xin[:16]
                if a.rule in ("wm", "ia"):
                    xin = torch.randn_like(xin) * rule.config.sigma
                row["layers"][name] = {
                    "W_norm": float(W.norm()), "B_norm": float(B.norm()),
                    "cos_BW": float((W * B).sum() / (W.norm() * B.norm()).clamp_min(1e-30)),
                    "input_ms": float(inputs[name].pow(2).mean()),
                    "stability": stability(rule, layer, xin, b_lr)
                    if a.rule in ("aa", "wm", "ia", "sa") and b_lr is not None else None}
            worst = max(row["layers"].items(), key=lambda kv: kv[1]["stability"] or 0.0)
            print(f"step {step + 1:5d}  loss {loss:9.3f}  lr {lr:.4f}  max stability {worst[1]['stability']} "
                  f"({worst[0]})", flush=True)
            rows.append(row)
            if not math.isfinite(loss):
                break
        opt.step()
        trainer.scheduler.step()
        rule.after_step(model)
        tie()
    write_lines(a.out, rows)


if __name__ == "__main__":
    main()
