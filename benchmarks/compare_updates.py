"""Do two versions of the code compute the same numbers? Save every update of a few training batches with
each rule, trace kind, update timing and engine, then compare two saves for exact equality.

Small networks, float32, three batches of 173 steps (two chunks), updates applied: JSB's layer two deep and
one deep (full reset, tanh, sigmoid readout) and SHD's two deep (recurrent, soft reset, fast sigmoid,
leaky readout), optionally with another neuron model. Run `save` with each tree first on PYTHONPATH:

    PYTHONPATH=OLD .venv/bin/python benchmarks/compare_updates.py save old.pt
    PYTHONPATH=NEW .venv/bin/python benchmarks/compare_updates.py save new.pt
    .venv/bin/python benchmarks/compare_updates.py compare old.pt new.pt

`compare` prints one line per configuration: EXACT, or the largest difference of any update or final
parameter relative to its largest entry, and whether the loss, frame and spike counts agree.
"""

from __future__ import annotations

import argparse
import itertools

import torch

T, N_IN, N_OUT, BATCH, BATCHES = 173, 12, 5, 3, 3
NETWORKS = {
    "jsb2": {"data": {"task": "synthetic"}, "model": {"hidden": [9, 7], "threshold_init": 0.2, "init_gain": 2.0}},
    "jsb1": {"data": {"task": "synthetic"}, "model": {"hidden": 11, "threshold_init": 0.2, "init_gain": 2.0}},
    "shd2": {"data": {"task": "shd"}, "model": {"hidden": [9, 7], "recurrent": True, "reset": "soft",
                                                 "surrogate": "fast_sigmoid", "decay": 0.9, "threshold_init": 0.3,
                                                 "init_gain": 2.0, "readout": "leaky", "readout_bias": False,
                                                 "tau": 0.95}},
}
RULES = [("bptt", "exact", "sequence")] + [
    (rule, traces, timing) for rule in ("osttp", "ostl", "ostl_rnd", "drtp") for traces in ("exact", "factorised")
    for timing in ("sequence", "step") if not (rule == "drtp" and traces == "factorised")]


def batches(network: str) -> list:
    from imc_osttp.data.batching import Batch

    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(BATCHES):
        x = (torch.rand(BATCH, T, N_IN, generator=g) < 0.3).float()
        labels = torch.randint(0, N_OUT, (BATCH,), generator=g)
        if network.startswith("shd"):
            y = torch.nn.functional.one_hot(labels, N_OUT).float()[:, None].expand(-1, T, -1).contiguous()
        else:
            y = (torch.rand(BATCH, T, N_OUT, generator=g) < 0.3).float()
        mask = torch.ones(BATCH, T)
        mask[0, T - 20:] = 0
        out.append(Batch(x, y, mask, torch.tensor([T - 20, T, T]), labels))
    return out


def save(path: str, model: dict) -> None:
    from imc_osttp.builder import build_network
    from imc_osttp.config import load_run_config
    from imc_osttp.rules import compute_update

    torch.set_num_threads(1)
    results = {}
    for network, (rule, traces, timing), engine in itertools.product(NETWORKS, RULES, ("fused", "eager")):
        tree = {**NETWORKS[network], "rule": {"name": rule, "traces": traces, "update_timing": timing},
                "train": {"engine": engine}, "optim": {"lr": 0.05}}
        tree["model"] = {**tree["model"], **model}
        cfg = load_run_config(extra=tree)
        net = build_network(cfg, N_IN, N_OUT)
        record = []
        for batch in batches(network):
            grads, stats = compute_update(cfg.rule, net, batch)
            if grads:
                net.backend.apply(grads)
            record.append(({k: v.clone() for k, v in grads.items()}, (stats.loss_sum, stats.frames, stats.spikes)))
        final = {k: v.detach().clone() for k, v in net.backend.parameters().items()}
        results[(network, rule, traces, timing, engine)] = (record, final)
    torch.save(results, path)


def compare(first: str, second: str) -> None:
    a, b = torch.load(first), torch.load(second)
    for key in a:
        (rec_a, final_a), (rec_b, final_b) = a[key], b[key]
        stats_equal = all(sa == sb for (_, sa), (_, sb) in zip(rec_a, rec_b, strict=True))
        pairs = [(ga[n], gb[n]) for (ga, _), (gb, _) in zip(rec_a, rec_b, strict=True) for n in ga]
        pairs += [(final_a[n], final_b[n]) for n in final_a]
        worst = max(float((u - v).abs().max() / u.abs().max().clamp_min(1e-30)) for u, v in pairs)
        verdict = "EXACT" if stats_equal and worst == 0 else f"DIFF   stats equal: {stats_equal}, max rel {worst:.3g}"
        print(f"{' '.join(key):42s} {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save")
    s.add_argument("path")
    s.add_argument("--neuron", default="snu", help="model.neuron (the default: snu, which every version has)")
    c = sub.add_parser("compare")
    c.add_argument("first")
    c.add_argument("second")
    args = ap.parse_args()
    if args.command == "save":
        save(args.path, {} if args.neuron == "snu" else {"neuron": args.neuron})
    else:
        compare(args.first, args.second)


if __name__ == "__main__":
    main()
