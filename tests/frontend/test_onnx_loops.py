"""Recurrent nets exported from PyTorch (LSTM, GRU, RNN; stacked, bidirectional, batch first) lower to
recurrent ``memplan.loop`` regions whose trips hold one time step, and match onnxruntime and eager."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import memplan
from memplan.ir.regions import LOOP, loop_spec

ort = pytest.importorskip("onnxruntime")


class Recurrent(torch.nn.Module):
    def __init__(self, batch_first=False):
        super().__init__()
        self.lstm = torch.nn.LSTM(16, 32, num_layers=2, bidirectional=True, batch_first=batch_first)
        self.gru = torch.nn.GRU(64, 24, batch_first=batch_first)
        self.rnn = torch.nn.RNN(24, 12, nonlinearity="relu", batch_first=batch_first)
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, h = self.gru(y)
        y, _ = self.rnn(y)
        return self.fc(y), h


@pytest.mark.parametrize("batch_first", [False, True])
def test_exported_recurrent_net(tmp_path, batch_first):
    torch.manual_seed(0)
    model = Recurrent(batch_first).eval()
    seq, batch = 40, 3
    x = torch.randn((batch, seq, 16) if batch_first else (seq, batch, 16))
    path = tmp_path / "rnn.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], opset_version=17)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    cm = memplan.compile(str(path), (x,))
    out = cm(x)
    with torch.no_grad():
        eager = model(x)
    for o, r, e in zip(out, ref, eager):
        np.testing.assert_allclose(o.numpy(), r, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(o.numpy(), e.numpy(), atol=1e-5, rtol=1e-4)
    loops = [n for n in cm.graph.nodes if n.op == LOOP]
    assert len(loops) == 2 * 2 + 1 + 1  # a loop per layer and direction
    for node in loops:
        spec = loop_spec(node)
        assert spec.trips == seq
        assert any(s.kind == "carry" for s in spec.inputs)
        for v in node.subgraph.values():  # one time step: no body value spans the sequence
            assert seq not in v.type.shape, (node.name, v.name, v.type)
    assert "recurrent loop" in cm.source


def _loop_model(trips=6):
    import onnx.helper as oh
    from onnx import TensorProto as TP
    w = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32) * 0.05
    body = oh.make_graph([
        oh.make_node("MatMul", ["x_in", "W"], ["xw"]),
        oh.make_node("Tanh", ["xw"], ["x_out"]),
        oh.make_node("ReduceSum", ["x_out"], ["s"], keepdims=0),
        oh.make_node("Identity", ["cond_in"], ["cond_out"]),
    ], "body", [oh.make_tensor_value_info("i", TP.INT64, []), oh.make_tensor_value_info("cond_in", TP.BOOL, []),
                oh.make_tensor_value_info("x_in", TP.FLOAT, [64, 256])],
        [oh.make_tensor_value_info("cond_out", TP.BOOL, []), oh.make_tensor_value_info("x_out", TP.FLOAT, [64, 256]),
         oh.make_tensor_value_info("s", TP.FLOAT, [])])
    inits = [oh.make_tensor("W", TP.FLOAT, [256, 256], w.ravel()), oh.make_tensor("trips", TP.INT64, [], [trips]),
             oh.make_tensor("cond", TP.BOOL, [], [True])]
    g = oh.make_graph([oh.make_node("Loop", ["trips", "cond", "x"], ["y", "sums"], body=body)], "loopy",
                      [oh.make_tensor_value_info("x", TP.FLOAT, [64, 256])],
                      [oh.make_tensor_value_info("y", TP.FLOAT, [64, 256]),
                       oh.make_tensor_value_info("sums", TP.FLOAT, [trips])], initializer=inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def test_onnx_loop_plans_its_body_once(tmp_path):
    import subprocess
    import sys

    import onnx
    path = tmp_path / "loop.onnx"
    onnx.save(_loop_model(), str(path))
    r = subprocess.run([sys.executable, "-m", "memplan.cli", "lower", str(path), "--dump-ir-after", "all", "-o",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    dump = (tmp_path / "out" / "dumps").glob("*verify_plan.mir")
    text = next(dump).read_text()
    assert text.count("memplan.loop(") == 1 and "trips=6" in text and "['carry', 0]" in text
    assert text.count("aten.tanh.default") == 1  # one body, planned once, run every trip
    x = torch.randn(64, 256)
    cm = memplan.compile(str(path), (x,))
    (loop,) = [n for n in cm.graph.nodes if n.op == LOOP]
    assert loop.scratch <= 2 * 64 * 256 * 4 + 64  # one trip's intermediates
    y, sums = cm(x)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(y.numpy(), ref[0], atol=1e-5)
    np.testing.assert_allclose(sums.numpy(), ref[1], atol=1e-3)  # sums of 16,384 terms of size ~1
