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
