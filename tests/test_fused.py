"""The fused engine (imc_osttp/fused.py) against the eager reference: every neuron model, every rule,
both trace kinds, per-sequence and per-step updates, feed-forward and recurrent layers, two layers
deep and sequences of several chunks; the analog backend receives the same pulses from either
engine; and the engine is chosen once, when the network is built."""

from __future__ import annotations

import warnings

import pytest
import torch

from imc_osttp.builder import build_network
from imc_osttp.config import load_run_config
from imc_osttp.data.batching import Batch
from imc_osttp.engine import EngineNotice, choose
from imc_osttp.registry import neuron_names
from imc_osttp.rules import compute_update
from imc_osttp.rules.online import CHUNK_STEPS

T = CHUNK_STEPS + 45  # two chunks: traces are carried from one into the next
N_IN, N_OUT, BATCH = 12, 5, 3
RULES = [("bptt", "exact", "sequence")] + [
    (rule, traces, timing) for rule in ("osttp", "ostl", "ostl_rnd", "drtp") for traces in ("exact", "factorised")
    for timing in ("sequence", "step") if not (rule == "drtp" and traces == "factorised")]
NETWORKS = {
    # JSB's layer (full reset, tanh surrogate, sigmoid readout), two deep
    "feedforward": {"data": {"task": "synthetic"},
                    "model": {"hidden": [9, 7], "threshold_init": 0.2, "init_gain": 2.0}},
    # SHD's layer (recurrent, soft reset, fast-sigmoid surrogate, leaky readout), two deep
    "recurrent": {"data": {"task": "shd"},
                  "model": {"hidden": [9, 7], "recurrent": True, "reset": "soft", "surrogate": "fast_sigmoid",
                            "decay": 0.9, "threshold_init": 0.3, "init_gain": 2.0, "readout": "leaky",
                            "readout_bias": False, "tau": 0.95}},
}
# each neuron model's own settings: ALIF's adaptation strong enough to change which units spike
OWN = {"snu": {}, "alif": {"alif": {"beta": 0.3, "decay": 0.9}}}


def make_cfg(network: str, rule: str, traces: str, timing: str, engine: str, dtype: str, neuron: str = "snu",
             **backend):
    model = {**NETWORKS[network]["model"], "neuron": neuron, **OWN[neuron]}
    tree = {**NETWORKS[network], "model": model, "rule": {"name": rule, "traces": traces, "update_timing": timing},
            "train": {"engine": engine, "dtype": dtype}, "optim": {"lr": 0.05}}
    if backend:
        tree["backend"] = backend
    return load_run_config(extra=tree)


def make_batch(dtype: torch.dtype, leaky: bool) -> Batch:
    g = torch.Generator().manual_seed(7)
    x = (torch.rand(BATCH, T, N_IN, generator=g) < 0.3).to(dtype)
    labels = torch.randint(0, N_OUT, (BATCH,), generator=g)
    if leaky:
        y = torch.nn.functional.one_hot(labels, N_OUT).to(dtype)[:, None].expand(-1, T, -1).contiguous()
    else:
        y = (torch.rand(BATCH, T, N_OUT, generator=g) < 0.3).to(dtype)
    mask = torch.ones(BATCH, T, dtype=dtype)
    mask[0, T - 20:] = 0  # a shorter sequence in the batch
    return Batch(x, y, mask, torch.tensor([T - 20, T, T]), labels)


def one_update(network: str, rule: str, traces: str, timing: str, engine: str, dtype: str, neuron: str = "snu",
               **backend):
    """The update the rule computes from the initial weights (per-step: the weights after the
    sequence's updates), its loss and spike count."""
    cfg = make_cfg(network, rule, traces, timing, engine, dtype, neuron, **backend)
    net = build_network(cfg, N_IN, N_OUT)
    grads, stats = compute_update(cfg.rule, net, make_batch(getattr(torch, dtype), network == "recurrent"))
    if timing == "step":
        grads = {name: value.detach().clone() for name, value in net.backend.parameters().items()}
    return grads, stats, net


@pytest.mark.parametrize("neuron", neuron_names())
@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize(("rule", "traces", "timing"), RULES)
def test_fused_matches_eager_in_float64(neuron, network, rule, traces, timing):
    eager, eager_stats, _ = one_update(network, rule, traces, timing, "eager", "float64", neuron)
    fused, fused_stats, net = one_update(network, rule, traces, timing, "fused", "float64", neuron)
    assert net.engine.name == "fused"
    assert set(fused) == set(eager)
    for name in eager:
        scale = float(eager[name].abs().max())
        assert scale > 0, f"{name}: no update, the comparison would prove nothing"
        assert float((fused[name] - eager[name]).abs().max()) <= 1e-10 * scale, name
    assert fused_stats.spikes == eager_stats.spikes > 0
    assert fused_stats.loss_sum == pytest.approx(eager_stats.loss_sum, rel=1e-12)


@pytest.mark.parametrize("neuron", neuron_names())
@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("rule", ["osttp", "bptt"])
def test_fused_forward_is_bit_identical_in_float32(neuron, network, rule):
    """The same operations in the same order: every spike and every loss term as the eager loop's."""
    _, eager, _ = one_update(network, rule, "exact", "sequence", "eager", "float32", neuron)
    _, fused, _ = one_update(network, rule, "exact", "sequence", "fused", "float32", neuron)
    assert (fused.loss_sum, fused.spikes) == (eager.loss_sum, eager.spikes)


@pytest.mark.parametrize(("neuron", "traces"), [("snu", "exact"), ("snu", "factorised"), ("alif", "exact")])
def test_analog_backend_receives_the_same_updates(neuron, traces):
    """Tiles are read by the same calls in the same order, so an analog run's rule hands the backend
    the same update with either engine (on noise-free tiles: aihwkit's read noise cannot be seeded).
    Tiles compute in float32, where the exact traces' chunk sums add in another order and the fused
    tanh surrogate is sech² from a sigmoid (≤ 1e-6 of the update's scale)."""
    pytest.importorskip("aihwkit")
    updates = {}
    for engine in ("eager", "fused"):
        grads, stats, net = one_update("feedforward", "osttp", traces, "sequence", engine, "float32", neuron,
                                       kind="analog", device_config="ideal", feedback_config="ideal")
        assert net.backend.kind == "analog"
        updates[engine] = grads
    assert set(updates["fused"]) == set(updates["eager"]) and updates["eager"]
    for name, value in updates["eager"].items():
        scale = float(value.abs().max())
        assert scale > 0
        assert float((updates["fused"][name] - value).abs().max()) <= 1e-6 * scale, name


def test_the_engine_is_chosen_once_when_the_network_is_built():
    """Fused on CPU tensors; eager when asked, on other devices, and for recurrent layers on analog tiles
    (a tile's y H is a noisy read per step, not a plain product the kernel could compute)."""
    cpu, meta = torch.zeros(1), torch.zeros(1, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no notice where the request is kept
        assert choose("fused", cpu, products_are_reads=True, recurrent=True).name == "fused"
        assert choose("fused", cpu, products_are_reads=False, recurrent=False).name == "fused"
        assert choose("eager", cpu, products_are_reads=True, recurrent=False).name == "eager"
    with pytest.warns(EngineNotice, match="eager, not fused: the recurrent products are reads of an analog tile"):
        assert choose("fused", cpu, products_are_reads=False, recurrent=True).name == "eager"
    with pytest.warns(EngineNotice, match="eager, not fused: the fused kernels run on CPU tensors, .* on meta"):
        assert choose("fused", meta, products_are_reads=True, recurrent=False).name == "eager"
    pytest.importorskip("aihwkit")
    analog = {"kind": "analog", "device_config": "ideal", "feedback_config": "ideal"}
    for network, engine in (("recurrent", "eager"), ("feedforward", "fused")):
        net = build_network(make_cfg(network, "osttp", "exact", "sequence", "fused", "float32", **analog), N_IN, N_OUT)
        assert net.engine.name == engine, network
