"""The ONNX frontend: import, constant folding, shapes, errors, numerics against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import memplan
from memplan.errors import InputMismatchError, ModelLoadError, UnsupportedOpError
from memplan.frontend.onnx import from_onnx, input_shapes_from_spec
from memplan.testing.onnx_backend import MemplanBackend
from memplan.frontend.onnx_ops import supported_onnx_ops

ort = pytest.importorskip("onnxruntime")

EXAMPLE = memplan.__file__.replace("__init__.py", "examples/tiny_cnn.onnx")


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def vi(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def run_ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_memplan(model, feeds):
    cm = memplan.compile(model, list(feeds.values()))
    out = cm(*[torch.from_numpy(v) for v in feeds.values()])
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def assert_matches_ort(model, feeds, rtol=1e-5, atol=1e-5):
    for ours, ref in zip(run_memplan(model, feeds), run_ort(model, feeds)):
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- the demo model
def test_tiny_cnn_matches_onnxruntime():
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    model = onnx.load(EXAMPLE)
    assert_matches_ort(model, {"x": x})


def test_tiny_cnn_is_reproducible():
    from memplan.examples.make_examples import tiny_cnn
    assert tiny_cnn().SerializeToString() == onnx.load(EXAMPLE).SerializeToString()


def test_shape_chain_folds_to_literal_reshape():
    g = from_onnx(EXAMPLE)
    ops = [n.op for n in g.nodes]
    assert ops == ["aten.convolution.default", "aten._native_batch_norm_legit_no_training.default",
                   "aten.relu.default", "aten.max_pool2d.default", "aten.convolution.default",
                   "aten._native_batch_norm_legit_no_training.default", "aten.relu.default", "aten.add.Tensor",
                   "aten.mean.dim", "aten.reshape.default", "aten.addmm.default", "aten._softmax.default"]
    (reshape,) = [n for n in g.nodes if n.op == "aten.reshape.default"]
    assert reshape.args[1] == [1, 16]
    assert reshape.source == "head.flatten" and reshape.source_op == "onnx::Reshape"
    conv = g.nodes[0]
    assert conv.op == "aten.convolution.default" and conv.source == "stem.conv" and conv.source_op == "onnx::Conv"
    assert "head.fc" in memplan.compile(EXAMPLE).source  # emitted code traces back to the ONNX node


def test_initializers_become_params_with_data():
    g = from_onnx(EXAMPLE)
    names = {p.name for p in g.params}
    assert "stem.conv.weight" in names or "stem_conv_weight" in names
    for p in g.params:
        assert p.name in g.weights and tuple(g.weights[p.name].shape) == p.type.shape


# ---------------------------------------------------------------- shapes
def _dynamic_mlp():
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Relu", ["h"], ["y"], name="act")]
    return make_model(nodes, [vi("x", ["batch", 8])], [vi("y", ["batch", 4])], [w])


def test_symbolic_dim_needs_example_inputs():
    with pytest.raises(InputMismatchError, match=r"'x'.*'batch'.*axis 0.*example inputs.*--input-shape"):
        from_onnx(_dynamic_mlp())


def test_example_inputs_specialise_shapes():
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    g = from_onnx(_dynamic_mlp(), [x])
    assert g.inputs[0].type.shape == (5, 8) and g.outputs[0].type.shape == (5, 4)
    assert from_onnx(_dynamic_mlp(), {"x": (3, 8)}).outputs[0].type.shape == (3, 4)
    assert from_onnx(_dynamic_mlp(), [torch.zeros(2, 8)]).outputs[0].type.shape == (2, 4)
    assert_matches_ort(_dynamic_mlp(), {"x": x})


def test_wrong_example_shape_and_dtype():
    with pytest.raises(InputMismatchError, match=r"'x'.*axis 1: 7 != 8"):
        from_onnx(_dynamic_mlp(), [np.zeros((2, 7), np.float32)])
    with pytest.raises(InputMismatchError, match=r"'x'.*rank"):
        from_onnx(_dynamic_mlp(), [np.zeros((2, 8, 1), np.float32)])
    with pytest.raises(InputMismatchError, match=r"'x'.*float64.*FLOAT"):
        from_onnx(_dynamic_mlp(), [np.zeros((2, 8), np.float64)])
    with pytest.raises(InputMismatchError, match="not graph inputs"):
        from_onnx(_dynamic_mlp(), {"y": (2, 8)})


def test_input_shapes_from_spec():
    assert input_shapes_from_spec("x=1x3x224x224,mask=1x128") == {"x": (1, 3, 224, 224), "mask": (1, 128)}
    assert input_shapes_from_spec("s=") == {"s": ()}
    with pytest.raises(InputMismatchError):
        input_shapes_from_spec("x=1xax3")
    with pytest.raises(InputMismatchError):
        input_shapes_from_spec("1x3")
    g = from_onnx(_dynamic_mlp(), input_shapes_from_spec("x=6x8"))
    assert g.outputs[0].type.shape == (6, 4)


# ---------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="nope.onnx"):
        from_onnx(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="nope.onnx"):
        memplan.compile(str(tmp_path / "nope.onnx"))


def test_garbage_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffthis is not a protobuf\x13\x37" * 10)
    with pytest.raises(ModelLoadError, match="garbage.onnx"):
        from_onnx(garbage)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(open(EXAMPLE, "rb").read()[:700])
    with pytest.raises(ModelLoadError, match="truncated.onnx"):
        from_onnx(truncated)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty.onnx"):
        from_onnx(empty)


def test_unsupported_op_names_op_node_and_support():
    model = make_model([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [vi("x", [3])],
                       [vi("y", None, TensorProto.INT64)])
    with pytest.raises(UnsupportedOpError) as info:
        from_onnx(model)
    msg = str(info.value)
    assert "NonZero" in msg and "'nz'" in msg and f"{len(supported_onnx_ops())} ONNX ops" in msg and "Conv" in msg
    assert "\n" not in msg
    assert info.value.op == "onnx::NonZero" and info.value.node == "nz"
    custom = make_model([helper.make_node("Frobnicate", ["x"], ["y"], name="f", domain="com.acme")],
                        [vi("x", [3])], [vi("y", [3])])
    custom.opset_import.append(helper.make_opsetid("com.acme", 1))
    with pytest.raises(UnsupportedOpError, match="com.acme::Frobnicate.*'f'"):
        from_onnx(custom)


def test_unsupported_attribute_value():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="area")
    model = make_model([node], [vi("x", [1, 1, 2, 2])], [vi("y", [1, 1, 4, 4])], [scales])
    with pytest.raises(UnsupportedOpError, match=r"Resize.*'up'.*mode='area'"):
        from_onnx(model)
    assert not MemplanBackend.claimed(model)


def test_value_dependent_shape_names_the_input():
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], name="r")
    model = make_model([node], [vi("x", [2, 3]), vi("shape", [2], TensorProto.INT64)], [vi("y", None)])
    with pytest.raises(UnsupportedOpError, match="'shape'"):
        from_onnx(model)
    g = from_onnx(model, bind_inputs={"shape": np.array([3, 2])})
    assert [v.name for v in g.inputs] == ["x"] and g.outputs[0].type.shape == (3, 2)
    rep = MemplanBackend.prepare(model)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(rep.run([x, np.array([6, 1])])[0], x.reshape(6, 1))


# ---------------------------------------------------------------- numerics
def test_transformer_block_matches_onnxruntime():
    rng = np.random.default_rng(3)
    d, heads = 16, 2

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [init("wq", d, d), init("wk", d, d), init("wv", d, d), init("ln_w", d), init("ln_b", d),
             numpy_helper.from_array(np.array([0, 0, heads, d // heads], np.int64), "split_heads"),
             numpy_helper.from_array(np.array([0, 0, d], np.int64), "merge_heads"),
             numpy_helper.from_array(np.array(1 / np.sqrt(d // heads), np.float32), "scale")]
    n = helper.make_node
    nodes = [
        n("LayerNormalization", ["x", "ln_w", "ln_b"], ["h"], name="ln", axis=-1, epsilon=1e-5),
        n("MatMul", ["h", "wq"], ["q0"], name="q"), n("MatMul", ["h", "wk"], ["k0"], name="k"),
        n("MatMul", ["h", "wv"], ["v0"], name="v"),
        n("Reshape", ["q0", "split_heads"], ["q1"]), n("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]),
        n("Reshape", ["k0", "split_heads"], ["k1"]), n("Transpose", ["k1"], ["kt"], perm=[0, 2, 3, 1]),
        n("Reshape", ["v0", "split_heads"], ["v1"]), n("Transpose", ["v1"], ["v"], perm=[0, 2, 1, 3]),
        n("MatMul", ["q", "kt"], ["s0"]), n("Mul", ["s0", "scale"], ["s"]),
        n("Softmax", ["s"], ["p"], axis=-1), n("MatMul", ["p", "v"], ["o0"]),
        n("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3]), n("Reshape", ["o1", "merge_heads"], ["o"]),
        n("Add", ["o", "x"], ["r"]), n("Erf", ["r"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", ["B", "S", d])], [vi("y", ["B", "S", d])], inits)
    x = rng.standard_normal((2, 5, d)).astype(np.float32)
    assert_matches_ort(model, {"x": x})


@pytest.mark.parametrize("mode,coord", [("nearest", "asymmetric"), ("linear", "half_pixel"),
                                        ("cubic", "align_corners"), ("linear", "pytorch_half_pixel")])
def test_resize_matches_onnxruntime(mode, coord):
    scales = numpy_helper.from_array(np.array([1, 1, 1.5, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode,
                            coordinate_transformation_mode=coord)
    model = make_model([node], [vi("x", [1, 2, 4, 5])], [vi("y", None)], [scales])
    x = np.random.default_rng(4).standard_normal((1, 2, 4, 5)).astype(np.float32)
    assert_matches_ort(model, {"x": x}, rtol=1e-4, atol=1e-5)


def test_conv_pool_variants_match_onnxruntime():
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    wt = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "wt")
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
        n("MaxPool", ["c"], ["m"], kernel_shape=[3, 3], pads=[0, 0, 1, 1], strides=[1, 1]),
        n("AveragePool", ["m"], ["a"], kernel_shape=[2, 2], pads=[1, 0, 0, 1], count_include_pad=0),
        n("ConvTranspose", ["a", "wt"], ["t"], strides=[2, 2], pads=[0, 1, 1, 0], output_padding=[1, 1]),
        n("LeakyRelu", ["t"], ["y"], alpha=0.2),
    ]
    model = make_model(nodes, [vi("x", [1, 3, 9, 11])], [vi("y", None)], [w, wt])
    x = rng.standard_normal((1, 3, 9, 11)).astype(np.float32)
    assert_matches_ort(model, {"x": x}, rtol=1e-4, atol=1e-4)


def test_old_opset_model_is_upgraded():
    # opset 9: Softmax over the flattened trailing dims, Upsample, BatchNormalization with old attributes
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Upsample", ["x", "scales"], ["u"], mode="nearest"),
             helper.make_node("Softmax", ["u"], ["y"], axis=1)]
    model = make_model(nodes, [vi("x", [1, 2, 2, 3])], [vi("y", None)], [scales], opset=9)
    x = np.random.default_rng(6).standard_normal((1, 2, 2, 3)).astype(np.float32)
    assert_matches_ort(model, {"x": x})


def test_integer_and_bool_ops_match_onnxruntime():
    n = helper.make_node
    nodes = [n("Div", ["a", "b"], ["d"]), n("Mod", ["a", "b"], ["m"]), n("Greater", ["d", "m"], ["g"]),
             n("Not", ["g"], ["ng"]), n("Cast", ["ng"], ["c"], to=TensorProto.INT32),
             n("CumSum", ["c", "axis"], ["y"], exclusive=1, reverse=1)]
    axis = numpy_helper.from_array(np.array(0, np.int64), "axis")
    model = make_model(nodes, [vi("a", [6], TensorProto.INT32), vi("b", [6], TensorProto.INT32)],
                       [vi("y", None, TensorProto.INT32)], [axis])
    feeds = {"a": np.array([7, -7, 9, 3, -4, 5], np.int32), "b": np.array([2, 2, -4, 5, 3, 5], np.int32)}
    assert_matches_ort(model, feeds)


def test_torch_models_still_compile():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    cm = memplan.compile(model, (torch.randn(2, 4),))
    x = torch.randn(2, 4)
    torch.testing.assert_close(cm(x), model(x))
