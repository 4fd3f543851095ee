"""A neuron model defined outside the package (here: a current-based LIF, whose input current is a state of
its own, which the spike does not read) runs on both engines with every rule, and OSTL with exact traces
is BPTT on one feed-forward layer of it: adding a neuron is writing its definition and registering it
(`imc_osttp.register_neuron`, as a plugin does), no engine code; `model.neuron: cuba` then selects it."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

import imc_osttp
from imc_osttp.builder import build_network
from imc_osttp.config import load_run_config
from imc_osttp.data.batching import collate
from imc_osttp.neurons.base import Neuron, elementwise
from imc_osttp.rules import compute_update


class CubaParams(NamedTuple):
    decay: float  # the membrane's leak
    alpha: float  # the synaptic current's
    one: float = 1.0


@elementwise
def cuba_step(cur, h, y, b, p):  # noqa: ANN001, ANN201
    """i^t = α i^{t-1} + cur^t, v^t = d v^{t-1} + i^t − y^{t-1} b (soft reset), spike on v − b."""
    i = p.alpha * h[0] + cur
    v = p.decay * h[1] + i - y * b
    return (i, v), v - b


@elementwise
def cuba_jacobian(h, y, psi, b, hd, p, exact):  # noqa: ANN001, ANN201
    """Rows i^t, v^t; the spike y^{t-1} = Θ(v − b) moves with v only (ψ), and feeds the reset of v (−b) and,
    through the recurrent self-weight, the current (hd); factorised: those paths dropped."""
    zero = p.one - p.one
    if not exact:
        return ((p.alpha, zero), (p.alpha, p.decay)), (zero, -y)
    ui = zero if hd is None else hd
    uv = ui - b
    return ((p.alpha, ui * psi), (p.alpha, p.decay + uv * psi)), (-(ui * psi), -y - uv * psi)


@elementwise
def cuba_spike_grad(p):  # noqa: ANN001, ANN201
    return (p.one - p.one, p.one)  # the spike reads v only


@elementwise
def cuba_current_grad(p):  # noqa: ANN001, ANN201
    return (p.one, p.one)  # the current enters i, and v through the new i


CUBA = Neuron("cuba", ("i", "v"), lambda layer: CubaParams(layer.decay, 0.7), cuba_step, cuba_jacobian,
              cuba_spike_grad, cuba_current_grad)
imc_osttp.register_neuron(CUBA)


def cuba_network(rule: str, traces: str, engine: str, recurrent: bool, timing: str = "sequence"):
    cfg = load_run_config(None, [f"rule.name={rule}", f"rule.traces={traces}", f"train.engine={engine}",
                                 f"model.recurrent={str(recurrent).lower()}", f"rule.update_timing={timing}",
                                 "train.dtype=float64", "model.hidden=[9, 7]", "model.reset=soft",
                                 "model.threshold_init=0.3", "model.init_gain=2.5", "optim.lr=0.05",
                                 "model.neuron=cuba"])
    net = build_network(cfg, 10, 8)
    assert [dyn.neuron for dyn in net.dynamics] == [CUBA, CUBA]
    return cfg, net


def make_batch(seed: int = 0, lengths=(150, 9, 140)):
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.rand(T, 10, generator=g) < 0.3).double() for T in lengths]
    return collate(xs, [(torch.rand(T, 8, generator=g) < 0.2).double() for T in lengths])


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("rule,traces,timing", [("bptt", "exact", "sequence"), ("osttp", "exact", "sequence"),
                                                ("osttp", "factorised", "sequence"), ("ostl", "exact", "step"),
                                                ("drtp", "exact", "sequence")])
def test_a_neuron_from_outside_runs_on_both_engines(rule, traces, timing, recurrent):
    """Two layers, sequences over two chunks: the fused kernels generated for it agree with torch."""
    batch = make_batch()
    out = {}
    for engine in ("eager", "fused"):
        cfg, net = cuba_network(rule, traces, engine, recurrent, timing)
        assert net.engine.name == engine
        grads, stats = compute_update(cfg.rule, net, batch)
        out[engine] = (grads or {k: v.detach() for k, v in net.backend.parameters().items()}, stats)
    (eager, eager_stats), (fused, fused_stats) = out["eager"], out["fused"]
    assert fused_stats.spikes == eager_stats.spikes > 0
    for name in eager:
        scale = float(eager[name].abs().max())
        assert scale > 0
        assert float((fused[name] - eager[name]).abs().max()) <= 1e-10 * scale, name


def test_ostl_equals_bptt_for_a_neuron_from_outside():
    batch = make_batch(1, lengths=(9, 6, 11))
    results = {}
    for rule in ("bptt", "ostl"):
        cfg = load_run_config(None, [f"rule.name={rule}", "train.dtype=float64", "model.hidden=12", "model.reset=soft",
                                     "model.threshold_init=0.3", "model.init_gain=2.5", "model.neuron=cuba"])
        net = build_network(cfg, 10, 8)
        results[rule], stats = compute_update(cfg.rule, net, batch)
        assert stats.spikes > 0
    for name, grad in results["bptt"].items():
        assert grad.norm() > 0
        assert float((results["ostl"][name] - grad).norm() / grad.norm()) <= 1e-9, name


def test_register_neuron_refuses_what_is_not_a_neuron_and_a_taken_name():
    with pytest.raises(imc_osttp.PluginError, match="expected an imc_osttp.neurons.base.Neuron"):
        imc_osttp.register_neuron(cuba_step)
    with pytest.raises(imc_osttp.PluginError, match="neuron 'cuba' is already registered"):
        imc_osttp.register_neuron(CUBA)
    with pytest.raises(imc_osttp.ConfigError, match="model.neuron: Input should be 'snu', 'alif' or 'cuba'"):
        load_run_config(None, ["model.neuron=lif"])
