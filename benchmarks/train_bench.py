"""Training under a budget: memplan (mode="train") beside eager, per-block checkpointing and
torch.compile with activation_memory_budget, measured in the same run.

    .venv/bin/python benchmarks/train_bench.py [--models gpt2,resnet50] [--fractions 1,0.8,0.6,0.5,0.4]
        [--no-inductor] [--markdown F]

One training step is ``loss = model(x).float().square().mean(); loss.backward()`` with the
parameters' ``.grad`` set to None before it (as ``optimizer.zero_grad()`` leaves them), so the step
allocates the gradients as well as the activations. Its peak is
:func:`memplan.profiling.allocation_peak`: bytes allocated during the step beyond what existed before
(parameters, inputs and buffers excluded). Budgets are fractions of eager's measured step peak.
Times: medians of interleaved steps (shared/MEASURING.md). Dropout is set to 0 (memplan refuses random
ops in training for now).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import median_time, publish  # noqa: E402

MiB = 2**20


def build(name: str):
    from memplan import zoo
    if name == "gpt2":
        model, (x,) = zoo.gpt2(n_layer=4, n_embd=256, n_head=4, batch=8, seq=512)
    elif name == "bert":
        model, (x,) = zoo.bert(n_layer=4, hidden=256, heads=4, batch=8, seq=512)
    elif name == "llama":
        model, (x,) = zoo.llama(n_layer=4, hidden=256, heads=4, kv_heads=2, batch=8, seq=512)
    elif name == "resnet50":
        model, (x,) = zoo.resnet50(batch=8, image=128)
    elif name == "unet":
        model, (x,) = zoo.unet(batch=2, image=64)
    else:
        raise SystemExit(f"unknown model {name!r}")
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model.train(), x


def blocks(model: nn.Module) -> nn.ModuleList | None:
    """The model's longest ModuleList (its repeated blocks), for per-block checkpointing."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    return max(lists, key=len) if lists else None


def checkpointed(model: nn.Module) -> nn.Module:
    from torch.utils.checkpoint import checkpoint
    model = copy.deepcopy(model)
    found = blocks(model)
    targets = list(found) if found is not None else [m for m in model.modules() if m is not model and
                                                      len(list(m.children())) and sum(1 for _ in m.parameters())]
    for block in targets:
        forward = block.forward
        block.forward = (lambda f: lambda *a, **k: checkpoint(f, *a, use_reentrant=False, **k))(forward)
    return model


def step_fn(model, x):
    def step():
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        out.float().square().mean().backward()
    return step


def measure(model, x, params) -> int:
    from memplan.profiling import allocation_peak
    step = step_fn(model, x)
    for p in params:
        p.grad = None
    step()  # warm (capture, compile)
    for p in params:
        p.grad = None
    peak, _ = allocation_peak(step)
    for p in params:
        p.grad = None
    return peak


def row_time(fns: dict, params_of: dict) -> dict:
    def wrap(name, fn):
        def run():
            for p in params_of[name]:
                p.grad = None
            fn()
        return run
    return median_time({k: wrap(k, f) for k, f in fns.items()}, repeats=5, warmup=1)


def main() -> int:
    import memplan
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,bert,llama,resnet50")
    parser.add_argument("--fractions", default="1,0.8,0.6,0.5,0.4")
    parser.add_argument("--no-inductor", action="store_true")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]
    rows = ["| model | peer | budget (of eager) | measured step peak | vs eager | step time | vs eager | "
            "memplan planned step peak | partition | plan time |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name in args.models.split(","):
        base, x = build(name)
        eager = copy.deepcopy(base)
        eager_peak = measure(eager, x, list(eager.parameters()))
        peers = {"eager": (eager, None)}
        ck = checkpointed(base)
        peers["checkpoint per block"] = (ck, None)
        if not args.no_inductor:
            for knob in (1.0, 0.5, 0.0):
                torch._dynamo.reset()
                m = copy.deepcopy(base)
                with torch._functorch.config.patch(activation_memory_budget=knob):
                    c = torch.compile(m, dynamic=False)
                    measure(c, x, list(m.parameters()))  # compiles under the knob
                peers[f"torch.compile, activation_memory_budget {knob}"] = (c, m)
        results = {}
        for peer, (mod, owner) in peers.items():
            owner = owner or mod
            results[peer] = (measure(mod, x, list(owner.parameters())), mod, owner)
        for fraction in fractions:
            budget = int(eager_peak * fraction)
            m = copy.deepcopy(base)
            start = time.perf_counter()
            cm = memplan.compile(m, (x,), mode="train", memory_budget=budget)
            try:
                peak = measure(cm, x, list(m.parameters()))
            except memplan.MemplanError as exc:
                rows.append(f"| {name} | memplan | {fraction:.0%} | no plan: {str(exc).split('(')[0][:90]} | | | | | | "
                            f"{time.perf_counter() - start:.0f} s |")
                continue
            plan_s = time.perf_counter() - start
            plan = cm.plans[-1]
            results[f"memplan @ {fraction:.0%}"] = (peak, cm, m, plan, plan_s, budget)
        times = row_time({k: step_fn(v[1], x) for k, v in results.items()}, {k: list(v[2].parameters())
                                                                                 for k, v in results.items()})
        for peer, value in results.items():
            peak = value[0]
            cells = [name, peer.split(" @ ")[0], peer.split(" @ ")[1] if " @ " in peer else "",
                     f"{peak / MiB:.1f} MiB", f"{peak / eager_peak:.2f}", f"{times[peer] * 1e3:.0f} ms",
                     f"{times[peer] / times['eager']:.2f}"]
            if len(value) > 3:
                plan, plan_s, budget = value[3], value[4], value[5]
                ok = "" if peak <= budget else " (OVER)"
                cells += [f"{plan.step_peak / MiB:.1f} MiB{ok}", plan.partition, f"{plan_s:.0f} s"]
            else:
                cells += ["", "", ""]
            rows.append("| " + " | ".join(cells) + " |")
        print("\n".join(rows), file=sys.stderr, flush=True)
    return publish("\n".join(rows), args.markdown)


if __name__ == "__main__":
    raise SystemExit(main())
