"""Meta-learned plasticity: the inner rule against backprop and hand computations, the meta-gradient
against finite differences, checkpointing, resume, the CLI and the EMNIST reader."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bioprop.config import ConfigError
from bioprop.meta import (TERMS, ClassPool, MetaLearner, Plasticity, PlasticityConfig, load_meta_config,
                          resolve_terms)
from bioprop.meta.plasticity import error_signals

D64 = torch.float64
ALL_TERMS = [f"F{r}" for r in range(10)]


def tiny_rule(feedback="fixed", terms=("pseudo_grad",), hidden=(5, 4), n_in=6, n_out=3, kp_decay=0.0):
    return Plasticity(PlasticityConfig(hidden=list(hidden), terms=list(terms), feedback=feedback, kp_decay=kp_decay),
                      n_in, n_out)


def tiny_pool(classes=6, per_class=12, dim=10, heldout=(4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randint(0, 256, (per_class, dim), generator=g, dtype=torch.uint8) for _ in range(classes)]
    return ClassPool(imgs, [f"c{i}" for i in range(classes)], list(heldout))


def tiny_config(tmp_path=None, **meta):
    m = {"M": 2, "K": 3, "Q": 2, "episodes": 3, "eval_every": 0, "test_episodes": 2, "save_every": 1,
         "dtype": "float64", "theta0": 0.05, "lr": 0.01}
    m.update(meta)
    over = [f"meta.{k}={v}" for k, v in m.items()] + ["plasticity.hidden=[5,4]", "progress=false",
                                                       "plasticity.terms=[F0,F2,F9]"]
    if tmp_path is not None:
        over.append(f"run_dir={tmp_path}")
    return load_meta_config(None, over)


# ---- the inner rule against backprop -------------------------------------------------------------
def test_sym_theta0_only_is_minus_theta0_times_the_gradient_and_errors_are_bp_deltas():
    rule = tiny_rule("sym", terms=("pseudo_grad", "error_hebb", "oja"))
    W, B = rule.init_weights(torch.Generator().manual_seed(1), D64)
    x = torch.rand(1, 6, dtype=D64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([2])
    theta = torch.tensor([0.3, 0.0, 0.0], dtype=D64)
    # autograd: CE of the same network, with the pre-activations kept for their deltas
    Wg = {k: v.clone().requires_grad_(True) for k, v in W.items()}
    h, pre = x, []
    for i, k in enumerate(rule.keys):
        a = h @ Wg[k].T
        a.retain_grad()
        pre.append(a)
        h = F.softplus(a, beta=10.0) if i < len(rule.keys) - 1 else a
    F.cross_entropy(h, y).backward()
    dW, e = rule.updates(W, B, x, y, theta)
    for k, d in zip(rule.keys, dW):
        torch.testing.assert_close(d, -0.3 * Wg[k].grad, rtol=1e-12, atol=1e-14)
    for l, a in enumerate(pre, start=1):            # e_l = dCE/da_l, every layer
        torch.testing.assert_close(e[l], a.grad, rtol=1e-12, atol=1e-14)
    W2, B2 = rule.step(W, B, x, y, theta)
    for k in rule.keys:
        torch.testing.assert_close(W2[k] - W[k], -0.3 * Wg[k].grad, rtol=1e-10, atol=1e-14)
        assert B2[k] is W2[k]                         # B follows W


def test_fixed_feedback_errors_use_B_not_W():
    rule = tiny_rule("fixed")
    W, B = rule.init_weights(torch.Generator().manual_seed(3), D64)
    x = torch.rand(1, 6, dtype=D64)
    acts, logits = rule.forward(W, x)
    e = rule.errors(W, B, acts, logits, torch.tensor([0]))
    k2 = rule.keys[2]
    expect = (e[3] @ B[k2]) * (1 - torch.exp(-10.0 * acts[2]))
    torch.testing.assert_close(e[2], expect)
    assert not torch.allclose(e[2], (e[3] @ W[k2]) * (1 - torch.exp(-10.0 * acts[2])))


# ---- each term against a hand computation -------------------------------------------------------
def _hand_terms(pre, post, pre_err, post_err, Wm):
    """Every term of the pool, element by element with Python floats (batch of one)."""
    n_out, n_in = len(post), len(pre)
    out = {}
    def mat(f):
        return [[f(i, j) for j in range(n_in)] for i in range(n_out)]
    out["pseudo_grad"] = mat(lambda i, j: -post_err[i] * pre[j])
    out["post_act_pre_err"] = mat(lambda i, j: -post[i] * pre_err[j])
    out["error_hebb"] = mat(lambda i, j: -post_err[i] * pre_err[j])
    out["hebb"] = mat(lambda i, j: -post[i] * pre[j])           # reference 476ae40 vec '2': p.update -= fur * y y^T
    out["post_err"] = mat(lambda i, j: -post_err[i])
    out["pre_err"] = mat(lambda i, j: -pre_err[j])
    out["post_act"] = mat(lambda i, j: -post[i])                # reference vec '4': p.update -= six * y_l 1^T
    out["pre_act"] = mat(lambda i, j: -pre[j])                  # reference vec '5': p.update -= svn * 1 y_{l-1}^T
    out["decay"] = mat(lambda i, j: -Wm[i][j])
    out["oja"] = mat(lambda i, j: post[i] * pre[j] - post[i] * sum(post[k] * Wm[k][j] for k in range(n_out)))
    return out


def test_each_term_by_hand_on_a_tiny_network():
    rule = tiny_rule("fixed", terms=ALL_TERMS, hidden=(3,), n_in=4, n_out=2)
    W, B = rule.init_weights(torch.Generator().manual_seed(4), D64)
    x = torch.rand(1, 4, dtype=D64, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([1])
    acts, logits = rule.forward(W, x)
    e = rule.errors(W, B, acts, logits, y)
    ys = list(acts) + [torch.softmax(logits, 1)]
    theta = torch.linspace(0.1, 1.0, 10, dtype=D64)
    dW, _ = rule.updates(W, B, x, y, theta)
    assert rule.term_names == TERMS.names()
    for l, k in enumerate(rule.keys):
        hand = _hand_terms(ys[l][0].tolist(), ys[l + 1][0].tolist(), e[l][0].tolist(), e[l + 1][0].tolist(),
                           W[k].tolist())
        total = torch.zeros_like(W[k])
        for r, name in enumerate(rule.term_names):
            from bioprop.meta.terms import TermInputs
            got = TERMS.get(name).fn(TermInputs(ys[l], ys[l + 1], e[l], e[l + 1], W[k]))
            torch.testing.assert_close(got, torch.tensor(hand[name], dtype=D64), rtol=1e-12, atol=1e-14,
                                       msg=f"term {name}, layer {l + 1}")
            total = total + theta[r] * got
        torch.testing.assert_close(dW[l], total, rtol=1e-12, atol=1e-14)


def test_error_recursion_by_hand():
    acts = [torch.tensor([[0.5, 1.0]], dtype=D64), torch.tensor([[0.2, 0.3, 0.1]], dtype=D64)]
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=D64)           # softmax = (1/4, 3/4)
    Bs = [torch.arange(6, dtype=D64).reshape(3, 2), torch.tensor([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]], dtype=D64)]
    e = error_signals(acts, logits, torch.tensor([1]), Bs, beta=10.0)
    eL = [0.25, -0.25]
    e1 = [(eL[0] * 1 + eL[1] * 2) * (1 - math.exp(-2.0)), (eL[1] * 1) * (1 - math.exp(-3.0)),
          (eL[0] * -1) * (1 - math.exp(-1.0))]
    e0 = [sum(e1[i] * Bs[0][i, j].item() for i in range(3)) * (1 - math.exp(-10.0 * acts[0][0, j].item()))
          for j in range(2)]
    for got, want in zip(e, [e0, e1, eL]):
        torch.testing.assert_close(got[0], torch.tensor(want, dtype=D64))


def test_terms_registry_and_bad_names():
    assert [TERMS.get(f"F{r}").index for r in range(10)] == list(range(10))
    assert TERMS.get("F9").name == "oja" and TERMS.get("F2").name == "error_hebb"
    # every term of the pool of ten is checked against the reference code (optim.py:generic_rule)
    assert {n for n in TERMS.names() if TERMS.get(n).checked} == set(TERMS.names()) and len(TERMS.names()) == 10
    for n in TERMS.names():                       # every term carries its equation; unchecked ones say so
        t = TERMS.get(n)
        assert t.equation.startswith(f"F{t.index} =")
        assert ("UNCHECKED" in t.equation) != t.checked
    with pytest.raises(ValueError, match="unknown plasticity term 'ojaa'"):
        resolve_terms(["pseudo_grad", "ojaa"])
    with pytest.raises(ValueError, match="first plasticity term must be pseudo_grad"):
        resolve_terms(["oja", "pseudo_grad"])
    with pytest.raises(ValueError, match="listed twice"):
        resolve_terms(["pseudo_grad", "F0"])


# ---- the meta-gradient --------------------------------------------------------------------------
@pytest.mark.parametrize("feedback,terms", [("fixed", ["F0", "F2", "F9"]), ("fixed", ALL_TERMS), ("kp", ["F0", "F2", "F9"])])
def test_meta_gradient_matches_finite_differences(feedback, terms):
    cfg = tiny_config(theta0=0.2)
    cfg.plasticity.feedback = feedback
    cfg.plasticity.terms = terms
    if feedback == "kp":
        cfg.plasticity.kp_decay = 0.05
    learner = MetaLearner(cfg, pool=tiny_pool())
    g = torch.Generator().manual_seed(0)
    theta = (learner.rule.initial_theta(0.2, D64) + 0.05 * torch.rand(len(terms), dtype=D64, generator=g))
    theta.requires_grad_(True)
    loss = learner.meta_loss(theta, "train", 0)[0]
    (grad,) = torch.autograd.grad(loss, theta)
    eps = 1e-6
    for r in range(len(terms)):
        d = torch.zeros_like(theta)
        d[r] = eps
        with torch.no_grad():
            fd = (learner.meta_loss(theta + d, "train", 0)[0] - learner.meta_loss(theta - d, "train", 0)[0]) / (2 * eps)
        assert abs(grad[r].item() - fd.item()) <= 1e-6 * max(1.0, abs(fd.item())), (terms[r], grad[r].item(), fd.item())


@pytest.mark.parametrize("feedback", ["fixed", "sym", "kp"])
def test_checkpointed_meta_gradient_equals_plain(feedback):
    cfg = tiny_config(K=4)
    cfg.plasticity.feedback = feedback
    learner = MetaLearner(cfg, pool=tiny_pool())
    theta = learner.rule.initial_theta(0.2, D64) + torch.tensor([0.0, 0.03, -0.02], dtype=D64)
    grads = []
    for every in (0, 3, 1):
        th = theta.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(learner.meta_loss(th, "train", 1, inner_checkpoint=every)[0], th)[0])
    assert torch.count_nonzero(grads[0]) == 3
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-13, atol=0)
    torch.testing.assert_close(grads[2], grads[0], rtol=1e-13, atol=0)


def _first_grad(learner):
    th = learner.theta.detach().clone().requires_grad_(True)
    return torch.autograd.grad(learner.meta_loss(th, "train", 0)[0], th)[0]


def test_term_lr_auto_scales_each_terms_first_adam_step():
    """meta.term_lr=auto: term r's first Adam step (lr * sign(g_r)) is multiplied by
    min(1, |g_0| / |g_r|), g the first episode's meta-gradient; 'same' leaves Adam's step alone."""
    steps = {}
    for mode in ("same", "auto"):
        cfg = tiny_config(lr=0.01, term_lr=mode)
        cfg.plasticity.terms = ALL_TERMS
        learner = MetaLearner(cfg, pool=tiny_pool())
        g = _first_grad(learner)
        before = learner.theta.detach().clone()
        learner.train_episode()
        steps[mode] = learner.theta.detach() - before
    scale = torch.clamp(g[0].abs() / g.abs(), max=1.0)
    assert (scale < 0.5).any() and (scale == 1).sum() >= 2, g   # some terms scaled down, some not
    adam_first = -0.01 * g / (g.abs() + 1e-8)  # Adam's bias-corrected first step
    torch.testing.assert_close(steps["same"], adam_first, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(steps["auto"], scale * adam_first, rtol=1e-9, atol=1e-15)


def test_clip_grad_clips_the_meta_gradient_adam_sees():
    learner = MetaLearner(tiny_config(clip_grad=1e-3), pool=tiny_pool())
    g = _first_grad(learner)
    assert g.norm() > 1e-3
    learner.train_episode()
    m1 = learner.opt.state_dict()["state"][0]["exp_avg"]        # (1 - beta1) * the gradient Adam was given
    torch.testing.assert_close(m1, 0.1 * g * (1e-3 / g.norm()), rtol=1e-4, atol=0)   # torch adds 1e-6 to the norm
    with pytest.raises(ValueError, match="clip_grad"):
        MetaLearner(tiny_config(clip_grad=-1), pool=tiny_pool())


def test_l1_term_of_the_meta_loss():
    cfg = tiny_config(lamb=0.5)
    learner = MetaLearner(cfg, pool=tiny_pool())
    theta = torch.tensor([0.1, -0.2, 0.3], dtype=D64)
    loss, ce, *_ = learner.meta_loss(theta, "train", 0)
    assert abs((loss - ce).item() - 0.5 * 0.6) < 1e-12


# ---- episodes, resume, CLI ---------------------------------------------------------------------
def test_episodes_are_deterministic_and_heldout_classes_never_meta_trained():
    pool = tiny_pool()
    from bioprop.meta import episode_generator
    a = pool.episode(episode_generator(3, "train", 7), "train", 2, 3, 2)
    b = pool.episode(episode_generator(3, "train", 7), "train", 2, 3, 2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_query, b.y_query)
    seen = set()
    for i in range(50):
        seen |= set(pool.episode(episode_generator(0, "train", i), "train", 2, 3, 2).classes)
    assert seen == {0, 1, 2, 3}
    held = pool.episode(episode_generator(0, "heldout", 0), "heldout", 2, 3, 2)
    assert set(held.classes) == {4, 5} and set(held.y_train.tolist()) == {4, 5}
    assert a.x_train.shape == (6, 10) and float(a.x_train.max()) <= 1.0
    with pytest.raises(ValueError, match="only 2 classes"):
        pool.episode(episode_generator(0, "heldout", 0), "heldout", 3, 3, 2)


@pytest.mark.parametrize("term_lr", ["same", "auto"])
def test_resume_after_a_kill_is_bit_identical(tmp_path, term_lr):
    straight = MetaLearner(tiny_config(tmp_path / "a", episodes=4, term_lr=term_lr), pool=tiny_pool())
    straight.fit()
    # killed after episode 3, with the last checkpoint at episode 2 (save_every=2)
    killed = MetaLearner(tiny_config(tmp_path / "b", episodes=4, save_every=2, term_lr=term_lr), pool=tiny_pool())
    killed.run_dir.mkdir(parents=True)
    for _ in range(3):
        killed._write(killed.train_episode())
        if killed.episode % 2 == 0:
            killed.save()
    del killed
    resumed = MetaLearner(tiny_config(tmp_path / "b", episodes=4, save_every=2, term_lr=term_lr), pool=tiny_pool(),
                          resume=True)
    if term_lr == "auto":   # the per-term step scale set at episode 1 comes back from the checkpoint
        assert resumed.term_scale is not None and torch.equal(resumed.term_scale, straight.term_scale)
    assert resumed.episode == 2
    resumed.fit()
    assert torch.equal(resumed.theta.detach(), straight.theta.detach())
    sa, sb = straight.opt.state_dict()["state"][0], resumed.opt.state_dict()["state"][0]
    assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    la = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert la == lb and len(la) == 4


def test_meta_training_moves_theta_and_logs_metrics(tmp_path):
    learner = MetaLearner(tiny_config(tmp_path, episodes=2, eval_every=1, eval_episodes=1), pool=tiny_pool())
    res = learner.fit()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["episode"] for r in train] == [1, 2]
    assert set(train[0]["theta"]) == {"pseudo_grad", "error_hebb", "oja"}
    assert {"angle_l1", "angle_l2", "meta_loss", "query_acc"} <= set(train[0])
    assert res["theta"] != train[0]["theta"]
    assert res["heldout"]["phase"] == "heldout" and 0 <= res["heldout"]["acc"] <= 1
    assert (tmp_path / "result.json").is_file() and (tmp_path / "checkpoints" / "latest").is_file()


def test_sym_feedback_has_zero_error_angle():
    cfg = tiny_config()
    cfg.plasticity.feedback = "sym"
    learner = MetaLearner(cfg, pool=tiny_pool())
    res = learner.evaluate("heldout", 1)
    assert all(res[f"angle_l{l}"] < 1e-5 for l in (1, 2))


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="did you mean 'episodes'"):
        load_meta_config(None, ["meta.episode=3"])
    with pytest.raises(ConfigError, match="not one of"):
        load_meta_config(None, ["plasticity.feedback=random"])
    with pytest.raises(ValueError, match="kp_decay"):
        tiny_rule("fixed", kp_decay=0.1)
    with pytest.raises(ValueError, match="heldout classes \\[9\\] are outside"):
        tiny_pool(heldout=(9,))


def test_cli_meta_runs_on_the_embedded_pool(tmp_path, capsys):
    from bioprop.cli import main

    cfg = tmp_path / "m.yaml"
    cfg.write_text("pool: {datasets: [mnist_embedded], split: test, heldout: [8, 9]}\n"
                   "plasticity: {hidden: [8], terms: [pseudo_grad, error_hebb, oja]}\n"
                   "meta: {episodes: 2, M: 2, K: 3, Q: 2, eval_every: 1, eval_episodes: 1, test_episodes: 1, save_every: 1}\n")
    assert main(["meta", "--config", str(cfg), "--run-dir", str(tmp_path / "run"), "progress=false"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["episodes"] == 2 and set(out["theta"]) == {"pseudo_grad", "error_hebb", "oja"}
    assert (tmp_path / "run" / "result.json").is_file()
    # resume of a finished run does no more episodes
    assert main(["meta", "--config", str(cfg), "--run-dir", str(tmp_path / "run"), "--resume", "progress=false"]) == 0
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(r)["kind"] == "train" for r in rows) == 2
    assert main(["meta", "--config", str(cfg), "meta.MM=3"]) == 2


# ---- EMNIST reader ------------------------------------------------------------------------------
def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_emnist_reader_on_small_files(tmp_path):
    from bioprop.data import create_dataset

    d = tmp_path / "emnist"
    d.mkdir()
    img = np.zeros((3, 28, 28), np.uint8)
    img[:, 0, 5] = 200                                   # stored transposed: row 0, column 5
    _write_idx(d / "emnist-letters-train-images-idx3-ubyte.gz", img)
    _write_idx(d / "emnist-letters-train-labels-idx1-ubyte.gz", [1, 26, 3])
    _write_idx(d / "emnist-letters-test-images-idx3-ubyte.gz", img[:2])
    _write_idx(d / "emnist-letters-test-labels-idx1-ubyte.gz", [2, 2])
    ds = create_dataset("emnist_letters", data_dir=str(tmp_path))
    assert ds.num_classes == 26 and ds.train_y.tolist() == [0, 25, 2] and ds.test_y.tolist() == [1, 1]
    assert ds.train_x.shape == (3, 1, 28, 28) and ds.train_x[0, 0, 5, 0] == 200 and ds.train_x[0, 0, 0, 5] == 0
    _write_idx(d / "emnist-balanced-train-images-idx3-ubyte.gz", img)
    _write_idx(d / "emnist-balanced-train-labels-idx1-ubyte.gz", [0, 46, 47])
    _write_idx(d / "emnist-balanced-test-images-idx3-ubyte.gz", img[:1])
    _write_idx(d / "emnist-balanced-test-labels-idx1-ubyte.gz", [0])
    with pytest.raises(ValueError, match="labels outside 0..46"):
        create_dataset("emnist_balanced", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="not found"):
        create_dataset("emnist_digits", data_dir=str(tmp_path))


def test_meta_config_files_load_and_build_the_rule():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parent.parent / "configs").glob("meta_plasticity_*.yaml"))
    assert {f.stem for f in files} >= {"meta_plasticity_fa", "meta_plasticity_bp", "meta_plasticity_pool",
                                        "meta_plasticity_full"}
    for f in files:
        cfg = load_meta_config(f)
        rule = Plasticity(cfg.plasticity, 784, 20)
        assert rule.sizes == (784, 170, 130, 100, 70, 20)
