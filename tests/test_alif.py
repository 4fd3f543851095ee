"""The adaptive LIF neuron (e-prop's ALIF, Bellec et al. 2020): its exact traces give BPTT's gradient,
its factorised traces are e-prop's, it is the SNU when it does not adapt, it adapts, and the
alignment diagnostic and its dump work for it."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import yaml
from test_gradients import M, N, make_batch, network, rel_err, update

from imc_osttp.builder import build_network
from imc_osttp.cli import main
from imc_osttp.config import load_run_config
from imc_osttp.errors import ConfigError
from imc_osttp.rules import compute_update

ALIF = ("model.neuron=alif", "model.alif.beta=0.4", "model.alif.decay=0.8")


@pytest.mark.parametrize("reset,surrogate,chunk", list(itertools.product(["full", "soft"], ["tanh", "fast_sigmoid"],
                                                                        [3, 64])))
def test_ostl_equals_bptt_for_one_feedforward_alif_layer(reset, surrogate, chunk, monkeypatch):
    """The OSTL theorem for a neuron whose state is per unit: exact traces through the 2×2 Jacobian give the
    BPTT gradient in float64, the threshold's included; chunks of 3 carry [k, B, m, n] traces across chunks."""
    monkeypatch.setattr("imc_osttp.rules.online.CHUNK_STEPS", chunk)
    batch = make_batch()
    opts = (*ALIF, f"model.reset={reset}", f"model.surrogate={surrogate}")
    bptt, stats, _ = update("bptt", batch, *opts)
    ostl, _, _ = update("ostl", batch, *opts)
    assert stats.spikes > 0
    assert set(bptt) == {"W1", "b1", "W2", "c2"}
    for name in bptt:
        assert bptt[name].norm() > 0
        assert rel_err(ostl[name], bptt[name]) <= 1e-9, name
    snu, _, _ = update("bptt", batch, f"model.reset={reset}", f"model.surrogate={surrogate}")
    assert rel_err(snu["W1"], bptt["W1"]) > 1e-3  # the adaptation changes the gradient: the check above has teeth


def test_factorised_traces_are_eprops():
    """OSTTP's factorised W1 update is e-prop's ALIF eligibility (Bellec et al. 2020, eqs. 24-25):
    ε_v = x̄, ε_a ← ψ^{t-1} x̄^{t-1} + (ρ − βψ^{t-1}) ε_a, e = ψ (ε_v − β ε_a), computed here step by step."""
    batch = make_batch(2)
    cfg, net = network("osttp", *ALIF, "rule.traces=factorised")
    grads, _ = compute_update(cfg.rule, net, batch)
    p = {k: v.detach() for k, v in net.backend.params.items()}
    d, rho, beta, B = cfg.model.decay, cfg.model.alif.decay, cfg.model.alif.beta, net.backend.B
    Bsz, T, _ = batch.x.shape
    v = a = y = psi = torch.zeros(Bsz, N, dtype=torch.float64)
    x_bar = torch.zeros(Bsz, M, dtype=torch.float64)
    eps_a = torch.zeros(Bsz, M, N, dtype=torch.float64)
    dW = torch.zeros(M, N, dtype=torch.float64)
    for t in range(T):
        eps_a = psi[:, None, :] * x_bar[:, :, None] + (rho - beta * psi)[:, None, :] * eps_a
        x_bar = d * x_bar + batch.x[:, t]
        v = batch.x[:, t] @ p["W1"] + d * v * (1 - y)
        a = rho * a + y
        arg = v - (p["b1"] + beta * a)
        y, psi = (arg > 0).double(), 1 - torch.tanh(arg) ** 2
        L = (batch.y[:, t] * batch.mask[:, t : t + 1]) @ B
        dW += ((x_bar[:, :, None] - beta * eps_a) * (L * psi)[:, None, :]).sum(0)
    assert rel_err(grads["W1"], dW / Bsz) <= 1e-12
    exact, _, _ = update("osttp", batch, *ALIF)
    assert rel_err(exact["W1"], grads["W1"]) > 1e-3  # e-prop's approximation drops the reset's path


@pytest.mark.parametrize("rule,traces", [("bptt", "exact"), ("osttp", "exact"), ("osttp", "factorised"),
                                         ("ostl", "exact"), ("drtp", "exact")])
def test_without_adaptation_alif_is_the_snu(rule, traces):
    """β = 0: the threshold never moves, so every update is the SNU's (the adaptation's traces read 0)."""
    batch = make_batch(3)
    alif, alif_stats, _ = update(rule, batch, "model.neuron=alif", "model.alif.beta=0", f"rule.traces={traces}")
    snu, snu_stats, _ = update(rule, batch, f"rule.traces={traces}")
    assert alif_stats.spikes == snu_stats.spikes > 0
    for name in snu:
        assert rel_err(alif[name], snu[name]) <= 1e-12, name


def test_the_threshold_adapts():
    """A unit driven by a constant current fires at regular intervals as an SNU; with adaptation each spike
    raises its threshold by β, which decays by ρ per step, so it fires less and the gaps grow."""
    cur = torch.full((1, 40, 1), 0.35, dtype=torch.float64)
    counts = {}
    for beta in (0.0, 0.3):
        cfg = load_run_config(None, ["model.neuron=alif", f"model.alif.beta={beta}", "model.alif.decay=0.9",
                                     "model.reset=soft", "model.hidden=1", "model.threshold_init=0.5",
                                     "train.dtype=float64"])
        net = build_network(cfg, 1, 1)
        S, Y, _ = net.engine.layer(net.dynamics[0], cur, net.init_state(1, cur).layers[0],
                                   torch.tensor([0.5], dtype=torch.float64), None, None, False)
        counts[beta] = int(Y.sum())
        times = torch.nonzero(Y[0, :, 0]).flatten()
        gaps = times.diff()
        if beta:
            assert gaps[-1] > gaps[0]
            assert torch.allclose(S[1, 0, 1:, 0], 0.9 * S[1, 0, :-1, 0] + Y[0, :-1, 0])  # a^t = ρa + y^{t-1}
        else:
            assert len(set(gaps.tolist())) == 1
    assert 0 < counts[0.3] < counts[0.0]


def test_bad_alif_settings_are_one_clear_error():
    with pytest.raises(ConfigError, match="model.alif.decay"):
        load_run_config(None, ["model.neuron=alif", "model.alif.decay=1.5"])
    with pytest.raises(ConfigError, match="model.neuron"):
        load_run_config(None, ["model.neuron=izhikevich"])


def test_align_and_dump_for_alif(tmp_path, jsb_path, capsys):
    """`imc-osttp align` on ALIF layers: OSTL is BPTT on one feed-forward layer, and the dump names the
    neuron model and its settings."""
    cfg = {"name": "tiny", "data": {"task": "jsb", "path": str(jsb_path), "max_sequences": 6},
           "model": {"hidden": 16, "neuron": "alif", "alif": {"beta": 0.3, "decay": 0.9}},
           "train": {"epochs": 1, "batch_size": 3}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "dump"
    assert main(["align", str(path), "--json", "--dump", str(out), "--set", "train.dtype=float64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ostl"]["W1"]["cosine"] == pytest.approx(1.0, abs=1e-9)
    assert report["osttp"]["W1"]["cosine"] < 0.99
    meta = json.loads((out / "meta.json").read_text())
    assert meta["neuron"] == "alif" and meta["alif"] == {"beta": 0.3, "decay": 0.9}
    assert set(np.load(out / "updates_osttp.npz")) == {"W1", "b1", "W2", "c2"}
