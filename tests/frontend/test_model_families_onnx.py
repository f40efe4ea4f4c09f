"""Model families through the ONNX path: torch.onnx.export → memplan → vs onnxruntime and eager."""
import numpy as np
import pytest
import torch

import memplan
from memplan import zoo

ort = pytest.importorskip("onnxruntime")

FAST = [("mlp", {}), ("gpt2", {}), ("bert", {}), ("unet", {})]
SLOW = [("llama", {}), ("resnet50", {}), ("gpt2", {"n_layer": 12})]


def _check(name, kwargs, tmp_path):
    path = tmp_path / f"{name}.onnx"
    model, inputs = zoo.export_onnx(name, path, **kwargs)
    cm = memplan.compile(str(path), inputs)
    got = cm(*inputs)
    with torch.no_grad():
        eager = model(*inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    (reference,) = session.run(None, feeds)
    np.testing.assert_allclose(got.numpy(), reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-4)
    assert all(n.source_op.startswith("onnx::") for n in cm.graph.nodes)
    return cm


@pytest.mark.parametrize("name,kwargs", FAST, ids=[f[0] for f in FAST])
def test_family_onnx_matches_onnxruntime_and_eager(name, kwargs, tmp_path):
    _check(name, kwargs, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs", SLOW, ids=["llama", "resnet50", "gpt2-12L"])
def test_big_family_onnx(name, kwargs, tmp_path):
    _check(name, kwargs, tmp_path)
