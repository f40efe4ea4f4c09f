"""Training through planned code (memplan.compile(mode="train"), memplan.backend())."""
import copy

import pytest
import torch
from torch import nn

import memplan
from memplan.profiling import allocation_peak


def mlp(layers=3, width=64, hidden=256):
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
                           for _ in range(layers)])


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def train_alongside(model, x, loss_fn, steps=3, **compile_kwargs):
    """Train ``model`` through memplan and a copy eagerly, step for step; return both and the losses."""
    eager = copy.deepcopy(model)
    cm = memplan.compile(model, (x,), mode="train", **compile_kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = loss_fn(cm(x))
        loss.backward()
        loss_e = loss_fn(eager(x))
        loss_e.backward()
        for a, b in zip(model.parameters(), eager.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
        opt.step(), opt_e.step()
        opt.zero_grad(), opt_e.zero_grad()
        losses.append((loss.item(), loss_e.item()))
    return cm, eager, losses


def test_an_mlp_trains_as_eager():
    model, x = mlp(), torch.randn(32, 64)
    cm, eager, losses = train_alongside(model, x, lambda o: o.square().mean())
    for a, b in losses:
        assert a == pytest.approx(b, rel=1e-5)
    assert losses[-1][0] < losses[0][0]
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    (plan,) = cm.plans
    assert plan.partition == "default" and plan.step_peak > 0 and len(cm.compiled) == 2
    assert "step peak" in str(plan)


def test_batch_norm_statistics_are_updated_as_eager():
    model, x = cnn().train(), torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 3])
    cm, eager, _ = train_alongside(model, x, lambda o: nn.functional.cross_entropy(o, y))
    for a, b in zip(model.buffers(), eager.buffers()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6)


def test_tied_weights_train_as_eager():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 32)
            self.body = nn.Linear(32, 32)

        def forward(self, ids):
            h = torch.tanh(self.body(self.emb(ids)))
            return h @ self.emb.weight.t()  # the embedding is the output layer too

    torch.manual_seed(0)
    model, ids = Tied(), torch.randint(0, 100, (4, 12))
    train_alongside(model, ids, lambda o: nn.functional.cross_entropy(o.reshape(-1, 100), ids.reshape(-1)))


def test_the_budget_bounds_the_measured_step():
    torch.manual_seed(0)
    model, x = mlp(layers=4, width=128, hidden=512), torch.randn(256, 128)

    def step(mod):
        mod(x).square().mean().backward()

    eager = copy.deepcopy(model)
    eager_peak, _ = allocation_peak(step, eager)
    budget = int(eager_peak * 0.7)
    cm = memplan.compile(model, (x,), mode="train", memory_budget=budget)
    step(cm)  # captures and plans
    model.zero_grad(set_to_none=True)
    measured, _ = allocation_peak(step, cm)
    (plan,) = cm.plans
    assert plan.step_peak <= budget
    assert measured <= budget, (measured, budget, str(plan))
    assert plan.partition != "default"  # saving every activation does not fit: some are recomputed
    eager.zero_grad(set_to_none=True)
    step(eager)
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_a_budget_no_partition_meets_names_the_smallest_step():
    model, x = mlp(), torch.randn(32, 64)
    cm = memplan.compile(model, (x,), mode="train", memory_budget="4KiB")
    with pytest.raises(memplan.BudgetInfeasibleError) as info:
        cm(x)
    assert "no partition of the training step fits the budget 4.00 KiB" in str(info.value)
    assert info.value.best_peak > 4096
    assert all(p.grad is None for p in model.parameters())  # nothing ran


def test_the_backend_serves_inference_and_training():
    model, x = mlp(), torch.randn(8, 64)
    be = memplan.backend()
    compiled = torch.compile(model, backend=be, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert len(be.compiled) == 3  # an inference graph, then a forward and a backward


def test_saved_transposed_weights_are_not_copied():
    model, x = mlp(layers=2, width=256, hidden=1024), torch.randn(16, 256)
    cm = memplan.compile(model, (x,), mode="train")
    cm(x).sum().backward()
    (plan,) = cm.plans
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert plan.crossing_bytes < weights / 4  # the saved W.t() views are not counted, nor copied
    assert "input_copies" not in plan.backward.graph.attrs


@pytest.mark.parametrize("bad,words", [
    (dict(mode="training"), "mode must be"),
    (dict(mode="train", pipeline=["schedule"]), "no pipeline"),
])
def test_bad_training_arguments_get_one_line(bad, words):
    with pytest.raises(memplan.MemplanError, match=words):
        memplan.compile(mlp(), (torch.randn(2, 64),), **bad)


def test_train_mode_takes_a_module():
    with pytest.raises(memplan.MemplanError, match="nn.Module"):
        memplan.compile("model.onnx", mode="train")


def test_dropout_draws_one_mask_for_forward_and_backward():
    class Drop(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.linspace(0.5, 1.5, 64))

        def forward(self, x):
            return nn.functional.dropout(x * self.w, p=0.5, training=self.training)

    torch.manual_seed(0)
    model, x = Drop().train(), torch.rand(16, 64) + 0.1
    cm = memplan.compile(model, (x,), mode="train")
    for _ in range(2):
        model.w.grad = None
        out = cm(x)
        out.sum().backward()
        kept = (out != 0).float()
        assert 0.2 < kept.mean().item() < 0.8  # a mask was drawn
        # d out / d w where kept is x / (1 - p): the backward used the forward's mask
        torch.testing.assert_close(model.w.grad, (x * kept * 2.0).sum(0))
    from memplan.ir.ops import lookup
    with pytest.raises(memplan.UnsupportedOpError, match="random"):
        lookup("aten.native_dropout.default")  # outside training graphs, plans stay deterministic


def test_batch_norm_recomputed_under_a_budget_trains_as_eager():
    """The min-cut partitioner recomputes batch norms in the backward from the running statistics,
    which the step updates in place after the forward; memplan rewrites those reads away (training
    mode normalises by the batch's own statistics), else autograd would refuse the backward."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5)).train()
    x = torch.randn(8, 3, 32, 32)
    eager = copy.deepcopy(model)
    peak, _ = allocation_peak(lambda: eager(x).square().mean().backward())
    eager.zero_grad(set_to_none=True)
    cm, eager, _ = train_alongside(model, x, lambda o: o.square().mean(), steps=2, memory_budget=int(peak * 0.9))
    (plan,) = cm.plans
    assert plan.partition.startswith("min-cut"), plan.tried
    for a, b in zip(model.buffers(), eager.buffers()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6)


def test_gpt2_trains_as_eager_reading_saved_slices_in_place():
    """GPT-2's q, k and v are slices of one projection: the backward reads the saved slices through
    the elements they span (no row-major copies), and AOTAutograd's views of them still apply."""
    from memplan import zoo
    model, (x,) = zoo.gpt2(n_layer=2, n_embd=64, n_head=2, batch=2, seq=32)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    cm, eager, losses = train_alongside(model.train(), x, lambda o: o.square().mean(), steps=2)
    (plan,) = cm.plans
    assert "input_copies" not in plan.backward.graph.attrs
    assert "aten.as_strided.default" in {n.op for n in plan.backward.graph.nodes}


def test_under_a_budget_no_partition_draws_a_dropout_mask_again():
    """Min-cut partitions recompute dropout in the backward (a new mask, wrong gradients): refused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.Dropout(0.3), nn.GELU(), nn.Linear(512, 64)).train()
    x = torch.randn(256, 64)
    cm = memplan.compile(model, (x,), mode="train", memory_budget=10**9)
    cm(x).square().mean().backward()
    assert not any("dropout" in n.op for n in cm.plans[0].backward.graph.nodes if "backward" not in n.op)
    with pytest.raises(memplan.BudgetInfeasibleError) as info:  # every partition that recomputes it is refused
        memplan.compile(copy.deepcopy(model), (x,), mode="train", memory_budget=2**16)(x)
    assert "draws aten.native_dropout.default again" in str(info.value)


def test_under_a_budget_a_graph_break_is_an_error():
    class Breaks(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            h = self.a(x)
            print("", end="")  # a graph break
            return self.b(h)

    model, x = Breaks(), torch.randn(4, 16)
    cm = memplan.compile(model, (x,), mode="train", memory_budget="64MiB")
    with pytest.raises(memplan.MemplanError, match="one graph"):
        cm(x)
    loose = memplan.compile(model, (x,), mode="train")  # without a budget, graph breaks are fine
    loose(x).sum().backward()


def test_an_expanded_input_trains():
    model = mlp()
    x = torch.randn(1, 64).expand(8, 64)
    cm = memplan.compile(model, (x,), mode="train")
    cm(x).sum().backward()
    eager = copy.deepcopy(model)
    for p in eager.parameters():
        p.grad = None
    eager(x).sum().backward()
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_a_bad_option_value_is_a_memplan_error():
    model, x = mlp(), torch.randn(2, 64)
    for cm in (lambda: memplan.compile(model, (x,), options={"schedule_method": "bogus"}),
               lambda: memplan.compile(model, (x,), mode="train", options={"schedule_method": "bogus"})(x)):
        with pytest.raises(memplan.MemplanError, match="schedule_method='bogus'"):
            cm()
