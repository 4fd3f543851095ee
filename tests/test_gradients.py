"""The science: OSTL's traces give BPTT's gradient; OSTTP is local; DRTP has no memory."""

from __future__ import annotations

import itertools

import pytest
import torch

from imc_osttp.builder import build_network
from imc_osttp.config import load_run_config
from imc_osttp.data.batching import collate
from imc_osttp.rules import compute_update

M = K = 10
N = 12


def make_batch(seed: int = 0, lengths=(7, 5, 9)):
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.rand(T, M, generator=g) < 0.3).double() for T in lengths]
    return collate(xs, [(torch.rand(T, K, generator=g) < 0.2).double() for T in lengths])


def network(rule: str, *overrides: str):
    cfg = load_run_config(None, [f"rule.name={rule}", "train.dtype=float64", f"model.hidden={N}",
                                 "model.threshold_init=0.3", "model.init_gain=2.0", *overrides])
    return cfg, build_network(cfg, M, K)


def update(rule: str, batch, *overrides: str):
    cfg, net = network(rule, *overrides)
    grads, stats = compute_update(cfg.rule, net, batch)
    return grads, stats, net


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("reset,surrogate,chunk", list(itertools.product(["full", "soft"], ["tanh", "fast_sigmoid"],
                                                                        [2, 64])))
def test_ostl_equals_bptt_feedforward(reset, surrogate, chunk, monkeypatch):
    """Chunk 2 makes the sequence cross chunk boundaries; 64 holds it in one chunk."""
    monkeypatch.setattr("imc_osttp.rules.online.CHUNK_STEPS", chunk)
    batch = make_batch()
    opts = (f"model.reset={reset}", f"model.surrogate={surrogate}", "model.train_threshold=true")
    bptt, stats, _ = update("bptt", batch, *opts)
    ostl, _, _ = update("ostl", batch, *opts)
    assert stats.spikes > 0, "the test needs spiking neurons to exercise the reset path"
    assert set(bptt) == {"W1", "b1", "W2", "c2"}
    for name in bptt:
        assert bptt[name].norm() > 0
        assert rel_err(ostl[name], bptt[name]) <= 1e-6, name


@pytest.mark.parametrize("neuron", [(), ("model.neuron=alif", "model.alif.beta=0.4", "model.alif.decay=0.8")],
                         ids=["snu", "alif"])
def test_ostl_equals_bptt_with_diagonal_recurrence(neuron):
    """With a diagonal H the dropped off-diagonal terms vanish, so the traces are exact again: the
    diagonal enters the per-unit Jacobian (ALIF's 2×2 one too)."""
    batch = make_batch(1)
    results = {}
    for rule in ("bptt", "ostl"):
        cfg, net = network(rule, "model.recurrent=true", "model.reset=soft", *neuron)
        with torch.no_grad():
            H = net.backend.params["H1"]
            H.copy_(torch.diag(torch.diagonal(H)))
        results[rule], _ = compute_update(cfg.rule, net, batch)
    for name in results["bptt"]:
        assert rel_err(results["ostl"][name], results["bptt"][name]) <= 1e-6, name


def test_ostl_differs_from_bptt_with_full_recurrence():
    """Sanity check that the equivalence tests can fail: dense H breaks exactness."""
    batch = make_batch(2)
    bptt, _, _ = update("bptt", batch, "model.recurrent=true")
    ostl, _, _ = update("ostl", batch, "model.recurrent=true")
    assert rel_err(ostl["W1"], bptt["W1"]) > 1e-4


def test_factorised_equals_exact_when_leak_is_constant():
    """Soft reset with threshold 0: D^t = d exactly, so the W trace is the filtered input."""
    batch = make_batch(3)
    opts = ("model.reset=soft", "model.threshold_init=0.0", "model.train_threshold=false")
    exact, _, _ = update("osttp", batch, *opts, "rule.traces=exact")
    fact, _, _ = update("osttp", batch, *opts, "rule.traces=factorised")
    assert rel_err(fact["W1"], exact["W1"]) <= 1e-10


def test_factorised_differs_from_exact_with_reset():
    batch = make_batch(3)
    exact, _, _ = update("osttp", batch, "rule.traces=exact")
    fact, _, _ = update("osttp", batch, "rule.traces=factorised")
    assert rel_err(fact["W1"], exact["W1"]) > 1e-3


def test_osttp_hidden_update_ignores_w2():
    batch = make_batch(4)
    cfg, net = network("osttp")
    before, _ = compute_update(cfg.rule, net, batch)
    with torch.no_grad():
        net.backend.params["W2"].copy_(torch.randn_like(net.backend.params["W2"]) * 3)
    after, _ = compute_update(cfg.rule, net, batch)
    assert torch.equal(before["W1"], after["W1"]) and torch.equal(before["b1"], after["b1"])
    assert not torch.allclose(before["W2"], after["W2"])  # the readout's own gradient does change


def test_osttp_matches_spec_formula():
    """ΔW1 = Σ_t Σ_b eps_b^t ⊙ (ψ^t ⊙ y*^t B), eps the exact trace, computed here independently."""
    batch = make_batch(5)
    cfg, net = network("osttp")
    grads, _ = compute_update(cfg.rule, net, batch)
    p = {k: v.detach() for k, v in net.backend.params.items()}
    d, B = cfg.model.decay, net.backend.B
    Bsz, T, _ = batch.x.shape
    s = y = psi = torch.zeros(Bsz, N, dtype=torch.float64)
    eps = torch.zeros(Bsz, M, N, dtype=torch.float64)
    dW = torch.zeros(M, N, dtype=torch.float64)
    for t in range(T):
        D = d * (1 - y) - d * s * psi
        s = batch.x[:, t] @ p["W1"] + d * s * (1 - y)
        y = (s - p["b1"] > 0).double()
        psi = 1 - torch.tanh(s - p["b1"]) ** 2
        eps = D[:, None, :] * eps + batch.x[:, t][:, :, None]
        L = (batch.y[:, t] * batch.mask[:, t : t + 1]) @ B
        dW += (eps * (L * psi)[:, None, :]).sum(0)
    assert rel_err(grads["W1"], dW / Bsz) <= 1e-12


def test_drtp_uses_no_trace():
    """DRTP's update is Σ_t x^tᵀ (ψ^t ⊙ y*^t B): step t's inputs only, no memory of earlier steps."""
    batch = make_batch(6)
    cfg, net = network("drtp")
    grads, _ = compute_update(cfg.rule, net, batch)
    p = net.backend.params
    expected = torch.zeros(M, N, dtype=torch.float64)
    with torch.no_grad():
        chunk, _ = net.run(batch.x, net.init_state(batch.size, batch.x))
        for t in range(batch.x.shape[1]):
            L = (batch.y[:, t] * batch.mask[:, t : t + 1]) @ net.backend.B
            expected += batch.x[:, t].T @ (L * chunk.psi[:, t])
    assert rel_err(grads["W1"], expected / batch.size) <= 1e-12
    assert p["W1"].shape == grads["W1"].shape


def test_ostl_rnd_uses_feedback_matrix_not_w2():
    batch = make_batch(7)
    cfg, net = network("ostl_rnd")
    before, _ = compute_update(cfg.rule, net, batch)
    with torch.no_grad():
        net.backend.params["W2"].mul_(-1.0)
    after, _ = compute_update(cfg.rule, net, batch)
    # the readout error changes with W2, so the hidden update changes, but W2 itself is never read
    ostl_cfg, ostl_net = network("ostl")
    assert not torch.allclose(before["W1"], after["W1"])
    assert rel_err(before["W1"], compute_update(ostl_cfg.rule, ostl_net, batch)[0]["W1"]) > 1e-3


@pytest.mark.parametrize("traces", ["exact", "factorised"])
def test_chunking_does_not_change_the_update(traces, monkeypatch):
    batch = make_batch(9, lengths=(11, 4, 8))
    results = []
    for chunk in (1, 3, 64):
        monkeypatch.setattr("imc_osttp.rules.online.CHUNK_STEPS", chunk)
        results.append(update("osttp", batch, f"rule.traces={traces}", "model.reset=soft")[0])
    for other in results[1:]:
        for name in results[0]:
            assert rel_err(other[name], results[0][name]) <= 1e-12, name


def test_per_step_updates_apply_each_step():
    """With a tiny learning rate, per-step SGD sums to the per-sequence update; with a large one the
    later steps already see changed weights, so the two differ."""
    batch = make_batch(8)
    cfg, net = network("osttp", "optim.lr=1e-6")
    w0 = net.backend.params["W1"].detach().clone()
    seq, _ = compute_update(cfg.rule, net, batch)
    step_cfg, step_net = network("osttp", "rule.update_timing=step", "optim.lr=1e-6")
    assert compute_update(step_cfg.rule, step_net, batch)[0] == {}
    moved = (w0 - step_net.backend.params["W1"].detach()) / 1e-6
    assert rel_err(moved, seq["W1"]) < 1e-3
    big_cfg, big_net = network("osttp", "rule.update_timing=step", "optim.lr=1.0")
    compute_update(big_cfg.rule, big_net, batch)
    assert rel_err(w0 - big_net.backend.params["W1"].detach(), seq["W1"]) > 1e-2


def test_grad_clip_bounds_the_digital_step():
    batch = make_batch(10)
    cfg, net = network("osttp", "optim.lr=1.0", "optim.grad_clip=1e-3")
    w0 = {k: v.detach().clone() for k, v in net.backend.params.items()}
    grads, _ = compute_update(cfg.rule, net, batch)
    assert sum(float(g.norm() ** 2) for g in grads.values()) ** 0.5 > 1e-2
    net.backend.apply(grads)
    step = sum(float((net.backend.params[k].detach() - w0[k]).norm() ** 2) for k in grads) ** 0.5
    assert step == pytest.approx(1e-3, rel=1e-3)
