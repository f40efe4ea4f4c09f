"""The output (and input) contract of a compiled module, case by case.

- Outputs are fresh tensors unless eager's alias: never the caller's input or the model's
  weight behind a ``clone()``; mutating one changes neither the input nor the next call.
- ONNX outputs that are initializers, ``Identity`` of an initializer or of an input, or one
  value listed twice, match onnxruntime and are fresh on every call.
- Outputs are ordinary tensors (not inference tensors): ``y += 1`` and autograd work, as on
  eager's outputs under ``torch.no_grad``.
- Inputs of the right shape and dtype in any layout (transposed, expanded, sliced,
  channels-last) give eager's result (or a clean ``InputMismatchError``).
- Outputs have eager's strides.
- Model inputs named like the emitted code's own names compute the right result.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import memplan
from memplan.errors import InputMismatchError

FAST = {"measure_scratch": False}


def _as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _mutate(t: torch.Tensor) -> None:
    """Scribble over ``t`` (inside inference mode, so that this also works on an inference tensor:
    whether outputs are inference tensors is tested on its own below)."""
    with torch.inference_mode():
        t.add_(1000.0)


def _weight_storages(model, cm) -> set[int]:
    got = {_storage(t) for t in model.state_dict().values()}
    got |= {_storage(w) for w in cm.graph.weights.values() if isinstance(w, torch.Tensor)}
    return got


# ---------------------------------------------------------------- (a) views of clones are fresh
class CloneView(nn.Module):
    def forward(self, x):
        return x.clone().view(-1)


class CloneOnly(nn.Module):
    def forward(self, x):
        return x.clone()


class DetachCloneT(nn.Module):
    def forward(self, x):
        return x.detach().clone().t()


class CloneSlice(nn.Module):
    def forward(self, x):
        return x.clone()[1:]


class CloneUnsqueezePlusOne(nn.Module):
    def forward(self, x):
        return x.clone().unsqueeze(0), x + 1


class WeightCloneFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        return self.w.clone().flatten()


class WeightCloneWithInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))
        self.register_buffer("b", torch.randn(3, 4))

    def forward(self, x):
        return self.w.clone().flatten(), self.b.clone(), x * 2


CLONE_MODELS = {
    "x.clone().view(-1)": CloneView,
    "x.clone()": CloneOnly,
    "x.detach().clone().t()": DetachCloneT,
    "x.clone()[1:]": CloneSlice,
    "x.clone().unsqueeze(0), x + 1": CloneUnsqueezePlusOne,
    "self.w.clone().flatten()": WeightCloneFlatten,
    "self.w.clone().flatten(), self.b.clone(), x * 2": WeightCloneWithInput,
}


@pytest.mark.parametrize("name", list(CLONE_MODELS))
def test_outputs_of_clones_are_fresh(name):
    model = CLONE_MODELS[name]().eval()
    x = torch.randn(3, 4)
    cm = memplan.compile(model, (x,), options=FAST)
    x_before = x.clone()
    state_before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = _as_list(model(x))
    got = _as_list(cm(x))
    weights = _weight_storages(model, cm)
    for i, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e)
        assert _storage(g) != _storage(x), f"{name}: output {i} shares storage with the input"
        assert _storage(g) not in weights, f"{name}: output {i} shares storage with a weight"
    for g in got:
        _mutate(g)
    assert torch.equal(x, x_before), f"{name}: mutating the output changed the input"
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k]), f"{name}: mutating the output changed weight {k}"
    for i, (g, e) in enumerate(zip(_as_list(cm(x)), expected)):
        torch.testing.assert_close(g, e, msg=lambda m: f"{name}: next call, output {i}: {m}")


# ---------------------------------------------------------------- (b) ONNX: initializers, Identity, duplicates
def _onnx_model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "contract", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _onnx_cases():
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5, "W")
    x = _f32("X", (2, 3))
    relu = helper.make_node("Relu", ["X"], ["Y"], name="relu")
    return {
        "output is an initializer": _onnx_model([relu], [x], [_f32("Y", (2, 3)), _f32("W", (2, 3))], [w]),
        "output is only an initializer": _onnx_model([], [x], [_f32("W", (2, 3))], [w]),
        "Identity(initializer)": _onnx_model([helper.make_node("Identity", ["W"], ["Z"], name="id")], [x],
                                             [_f32("Z", (2, 3))], [w]),
        "Identity(initializer) and Relu(X)": _onnx_model(
            [relu, helper.make_node("Identity", ["W"], ["Z"], name="id")], [x],
            [_f32("Z", (2, 3)), _f32("Y", (2, 3))], [w]),
        "Identity(input)": _onnx_model([helper.make_node("Identity", ["X"], ["Z"], name="id")], [x],
                                       [_f32("Z", (2, 3))]),
        "input is an output": _onnx_model([relu], [x], [_f32("Y", (2, 3)), _f32("X", (2, 3))]),
        "same value twice": _onnx_model([relu], [x], [_f32("Y", (2, 3)), _f32("Y", (2, 3))]),
        "Identity(initializer) twice": _onnx_model([helper.make_node("Identity", ["W"], ["Z"], name="id")], [x],
                                                   [_f32("Z", (2, 3)), _f32("Z", (2, 3))], [w]),
    }


ONNX_CASES = _onnx_cases()


@pytest.mark.parametrize("name", list(ONNX_CASES))
def test_onnx_outputs_match_onnxruntime_and_are_fresh(name):
    model = ONNX_CASES[name]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"X": x})
    cm = memplan.compile(model, (torch.from_numpy(x.copy()),), options=FAST)
    xt = torch.from_numpy(x.copy())
    for call in range(3):
        got = _as_list(cm(xt))
        assert len(got) == len(expected), name
        for i, (g, e) in enumerate(zip(got, expected)):
            np.testing.assert_allclose(g.numpy(), e, rtol=1e-6, atol=1e-6, err_msg=f"{name}: call {call}, output {i}")
            assert _storage(g) != _storage(xt), f"{name}: output {i} shares storage with the input"
            assert _storage(g) not in _weight_storages(nn.Module(), cm), f"{name}: output {i} is a weight's storage"
        for g in got:
            _mutate(g)  # must not reach the input, the initializers, or the next call
        np.testing.assert_array_equal(xt.numpy(), x, err_msg=f"{name}: mutating an output changed the input")


# ---------------------------------------------------------------- (c) outputs are ordinary tensors
class LinearRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 5)

    def forward(self, x):
        return F.relu(self.lin(x))


class ConvModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x)) + 1


class TwoOutputs(nn.Module):
    def forward(self, x):
        return x.sigmoid(), x.clone()


GRAD_CASES = {
    "linear_relu": (LinearRelu, (4, 6)),
    "conv": (ConvModel, (1, 3, 6, 6)),
    "two_outputs": (TwoOutputs, (4, 6)),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_outputs_are_not_inference_tensors(name):
    cls, shape = GRAD_CASES[name]
    model = cls().eval()
    x = torch.randn(shape)
    cm = memplan.compile(model, (x,), options=FAST)
    with torch.no_grad():
        eager = _as_list(model(x))
    for e in eager:  # what eager allows
        e += 1
        e.requires_grad_()
    for i, y in enumerate(_as_list(cm(x))):
        assert not y.is_inference(), f"{name}: output {i} is an inference tensor"
        before = y.clone()
        y += 1
        torch.testing.assert_close(y, before + 1)
        y.requires_grad_()
        (y * y).sum().backward()
        torch.testing.assert_close(y.grad, 2 * y.detach())


def test_onnx_outputs_are_not_inference_tensors():
    model = ONNX_CASES["output is an initializer"]
    cm = memplan.compile(model, (torch.randn(2, 3),), options=FAST)
    for y in _as_list(cm(torch.randn(2, 3))):
        assert not y.is_inference()
        y += 1
        y.requires_grad_()
        y.sum().backward()


# ---------------------------------------------------------------- (d) inputs in any layout
class Elementwise(nn.Module):
    def forward(self, x):
        return (x * 2 + 1).sigmoid()


class Flatten4d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).flatten(1).relu()


class ResidualInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x) + x


class InputFlattenLinear(nn.Module):
    """Flattens the input itself: captured as ``aten.view`` of the input for a contiguous example."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(24, 5)

    def forward(self, x):
        return self.lin(x.flatten(1)).relu()


class InputReshape(nn.Module):
    def forward(self, x):
        return x.reshape(-1) * 2


def _layouts_3d():
    return {
        "transposed": lambda: torch.randn(2, 6, 4).transpose(1, 2),
        "expanded": lambda: torch.randn(2, 1, 6).expand(2, 4, 6),
        "strided slice": lambda: torch.randn(2, 4, 12)[..., ::2],
        "sliced middle": lambda: torch.randn(2, 6, 6)[:, 1:5],
    }


def _layouts_2d():
    return {
        "transposed": lambda: torch.randn(6, 4).t(),
        "expanded": lambda: torch.randn(1, 6).expand(4, 6),
        "strided slice": lambda: torch.randn(4, 12)[:, ::2],
        "column slice": lambda: torch.randn(4, 8)[:, 1:7],
        "row slice (storage offset)": lambda: torch.randn(5, 6)[1:],
    }


def _layouts_4d():
    return {
        "channels_last": lambda: torch.randn(1, 3, 6, 6).to(memory_format=torch.channels_last),
        "permuted": lambda: torch.randn(1, 6, 6, 3).permute(0, 3, 1, 2),
        "expanded": lambda: torch.randn(1, 3, 1, 6).expand(1, 3, 6, 6),
        "sliced": lambda: torch.randn(1, 3, 8, 8)[:, :, 1:7, 2:8],
        "transposed HW": lambda: torch.randn(1, 3, 6, 6).transpose(2, 3),
    }


LAYOUT_CASES = (
    [(f"linear_relu/{k}", LinearRelu, (4, 6), f) for k, f in _layouts_2d().items()]
    + [(f"elementwise/{k}", Elementwise, (4, 6), f) for k, f in _layouts_2d().items()]
    + [(f"reshape_input/{k}", InputReshape, (4, 6), f) for k, f in _layouts_2d().items()]
    + [(f"flatten_input_linear/{k}", InputFlattenLinear, (2, 4, 6), f) for k, f in _layouts_3d().items()]
    + [(f"conv/{k}", ConvModel, (1, 3, 6, 6), f) for k, f in _layouts_4d().items()]
    + [(f"conv_flatten/{k}", Flatten4d, (1, 3, 6, 6), f) for k, f in _layouts_4d().items()]
    + [(f"residual_input/{k}", ResidualInput, (1, 3, 6, 6), f) for k, f in _layouts_4d().items()]
)


def _run_with_layout(cm, model, x):
    x_before = x.clone()
    with torch.no_grad():
        expected = _as_list(model(x))
    try:
        got = _as_list(cm(x))
    except InputMismatchError:
        return  # allowed (accepting is preferred)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    assert torch.equal(x, x_before), "the call modified the input"


@pytest.mark.parametrize("options", [FAST, {**FAST, "conv_kernel": "aten"}], ids=["default", "aten"])
@pytest.mark.parametrize("name,cls,shape,make", LAYOUT_CASES, ids=[c[0] for c in LAYOUT_CASES])
def test_inputs_in_any_layout(name, cls, shape, make, options):
    model = cls().eval()
    cm = memplan.compile(model, (torch.randn(shape),), options=options)
    x = make()
    assert tuple(x.shape) == shape
    _run_with_layout(cm, model, x)


def test_onnx_input_in_any_layout():
    shape = numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape")
    model = _onnx_model([helper.make_node("Relu", ["X"], ["Y"], name="relu"),
                         helper.make_node("Mul", ["Y", "X"], ["Z"], name="mul"),
                         helper.make_node("Reshape", ["X", "shape"], ["F"], name="flat")],
                        [_f32("X", (4, 6))], [_f32("Z", (4, 6)), _f32("F", (24,))], [shape])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    cm = memplan.compile(model, (torch.randn(4, 6),), options=FAST)
    for name, make in _layouts_2d().items():
        x = make()
        try:
            got = cm(x)
        except InputMismatchError:
            continue
        expected = sess.run(None, {"X": x.contiguous().numpy()})
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g.numpy(), e, rtol=1e-6, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------- (e) eager's strides
class ConvFlattenTranspose(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x).flatten(2).transpose(1, 2)


class ConvPermute(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x).permute(0, 2, 3, 1)


class ConvTransposeHW(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x)).transpose(2, 3)


class ConvRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x))


class ConvResidualTranspose(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        h = self.conv1(x)
        return (self.conv2(h) + h).flatten(2).transpose(1, 2), h


class LinearT(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 5)

    def forward(self, x):
        return self.lin(x).t()


class ElementwiseTranspose(nn.Module):
    def forward(self, x):
        return (x * 2).transpose(1, 2)


class SliceOfComputed(nn.Module):
    def forward(self, x):
        return (x + 1)[:, 1:3], (x * 3)[..., ::2]


STRIDE_CASES = {
    "conv->flatten(2)->transpose(1,2)": (ConvFlattenTranspose, (1, 3, 12, 12)),
    "conv->permute(0,2,3,1)": (ConvPermute, (1, 3, 12, 12)),
    "relu(conv)->transpose(2,3)": (ConvTransposeHW, (1, 3, 12, 12)),
    "relu(conv)": (ConvRelu, (1, 3, 12, 12)),
    "(conv2(h)+h)->flatten(2)->transpose(1,2), h": (ConvResidualTranspose, (1, 3, 12, 12)),
    "linear->t()": (LinearT, (4, 6)),
    "(x*2).transpose(1,2)": (ElementwiseTranspose, (2, 3, 4)),
    "slices of computed values": (SliceOfComputed, (2, 4, 6)),
}


@pytest.mark.parametrize("options", [FAST, {**FAST, "conv_kernel": "aten"}], ids=["default", "aten"])
@pytest.mark.parametrize("name", list(STRIDE_CASES))
def test_output_strides_match_eager(name, options):
    cls, shape = STRIDE_CASES[name]
    model = cls().eval()
    x = torch.randn(shape)
    cm = memplan.compile(model, (x,), options=options)
    with torch.no_grad():
        expected = _as_list(model(x))
    got = _as_list(cm(x))
    for i, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
        assert g.stride() == e.stride(), f"{name}: output {i} strides {g.stride()}, eager {e.stride()}"


# ---------------------------------------------------------------- (f) inputs named like the emitted code's names
CODE_NAMES = ["arena", "torch", "aten", "weights", "run", "inf", "nan", "arena_f32", "memplan_ops", "print",
              "math", "v_arena", "exp", "empty", "self", "x"]
ONNX_ONLY_NAMES = ["del", "return", "lambda", "def", "None", "True", "import", "1x", "x.y", "x y", "a-b",
                   "__builtins__", "__name__"]


def _onnx_named(name, other):
    """``Z = Relu(Exp(name) - other) * name`` with an intermediate value also named hostile."""
    mid = f"{name}_mid" if name != "arena" else "arena_f32"
    nodes = [helper.make_node("Exp", [name], [mid], name=f"exp_{name}"),
             helper.make_node("Sub", [mid, other], ["d"], name="sub"),
             helper.make_node("Relu", ["d"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", name], ["Z"], name="mul")]
    return _onnx_model(nodes, [_f32(name, (2, 3)), _f32(other, (2, 3))], [_f32("Z", (2, 3))])


@pytest.mark.parametrize("name", CODE_NAMES + ONNX_ONLY_NAMES)
def test_onnx_input_named_like_emitted_code(name):
    other = "weights" if name != "weights" else "arena"
    model = _onnx_named(name, other)
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((2, 3)).astype(np.float32) for _ in range(2))
    (expected,) = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"]).run(None, {name: a, other: b})
    cm = memplan.compile(model, (torch.from_numpy(a), torch.from_numpy(b)), options=FAST)
    got = cm(torch.from_numpy(a.copy()), torch.from_numpy(b.copy()))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def _torch_named(name):
    """A module whose forward's parameter is called ``name`` (it may shadow a global: the body uses
    only methods of the argument)."""
    src = (f"def forward(mod, {name}):\n"
           f"    h = mod.lin({name}).relu()\n"
           f"    return ({name}.exp() * 2).relu() - h + {name}\n")
    namespace = {}
    exec(src, namespace)  # test-local code built from the fixed CODE_NAMES list

    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        forward = namespace["forward"]

    return Named().eval()


@pytest.mark.parametrize("name", [n for n in CODE_NAMES if n != "self"])  # torch.export cannot take `self`
def test_torch_input_named_like_emitted_code(name):
    model = _torch_named(name)
    x = torch.randn(2, 3)
    cm = memplan.compile(model, (x,), options=FAST)
    with torch.no_grad():
        expected = model(x)
    got = cm(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


class ArenaAndWeights(nn.Module):
    """Two inputs named like the emitted prologue, a parameter named ``arena`` too."""

    def __init__(self):
        super().__init__()
        self.arena = nn.Parameter(torch.randn(2, 3))

    def forward(self, arena_f32, weights):
        return (arena_f32.exp() + self.arena).relu() * weights


def test_torch_inputs_and_parameter_named_like_emitted_code():
    model = ArenaAndWeights().eval()
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    cm = memplan.compile(model, (a, b), options=FAST)
    with torch.no_grad():
        expected = model(a, b)
    torch.testing.assert_close(cm(a, b), expected, rtol=1e-5, atol=1e-6)
