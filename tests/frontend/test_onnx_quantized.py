"""An int8 CNN exported from PyTorch and quantized by onnxruntime (QDQ format, static calibration):
``memplan lower`` emits it, memplan runs it with outputs equal to onnxruntime's, and its int8
weights stay int8 in memory (a quarter of the float model's resident bytes)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import memplan

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.c3 = torch.nn.Conv2d(32, 32, 3, padding=1, groups=2)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x) + x)
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("int8")
    fp32, qdq = d / "cnn.onnx", d / "cnn_int8.onnx"
    torch.onnx.export(SmallCNN().eval(), (torch.randn(1, 3, 32, 32),), str(fp32), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}}, opset_version=17)
    rng = np.random.default_rng(0)

    class Calibration(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    quantization.quantize_static(str(fp32), str(qdq), Calibration(), quant_format=quantization.QuantFormat.QDQ,
                                 activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8)
    return fp32, qdq


def test_int8_cnn_matches_onnxruntime(models):
    _, qdq = models
    ops = {n.op_type for n in onnx.load(str(qdq)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the model as written
    ref = ort.InferenceSession(str(qdq), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    cm = memplan.compile(str(qdq), (torch.from_numpy(x),))
    out = cm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)  # Q/DQ round to the same quantum


def test_int8_weights_stay_int8(models):
    fp32, qdq = models
    x = torch.randn(1, 3, 32, 32)
    g_int8 = memplan.compile(str(qdq), (x,)).graph
    g_fp32 = memplan.compile(str(fp32), (x,)).graph
    conv_weights = [p for p in g_int8.params if p.type.dtype == "i8" and p.type.rank == 4]
    assert len(conv_weights) == 3  # each conv's weight, one byte an element
    resident_int8 = sum(p.nbytes for p in g_int8.params)
    resident_fp32 = sum(p.nbytes for p in g_fp32.params)
    assert resident_int8 < 0.4 * resident_fp32, (resident_int8, resident_fp32)


def test_memplan_lower_cli(models, tmp_path):
    _, qdq = models
    r = subprocess.run([sys.executable, "-m", "memplan.cli", "lower", str(qdq), "--input-shape", "x=1x3x32x32", "--emit", "python,plan",
                        "-o", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    source = next(tmp_path.glob("*.py")).read_text()
    assert "torch.int8" in source or "int8" in source
