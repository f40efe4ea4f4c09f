"""Build the example ONNX models shipped with memplan (deterministic: fixed seed).

``tiny_cnn.onnx`` is the built-in demo (``make demo``): conv → batchnorm →
relu → maxpool → a residual block (conv → batchnorm → relu, + skip) →
global average pool → a ``Shape → Gather → Concat → Reshape`` flatten (which
memplan folds to a literal shape at import) → Gemm → softmax, on a
1×3×32×32 image.

Run ``python -m memplan.examples.make_examples`` to rebuild it next to this file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def tiny_cnn(seed: int = 0):
    """The demo CNN as an ``onnx.ModelProto`` (opset 17)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name, *shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        s = scale if scale is not None else 1.0 / np.sqrt(fan_in)
        return numpy_helper.from_array((rng.standard_normal(shape) * s).astype(np.float32), name)

    def batchnorm_params(prefix, c):
        return [
            numpy_helper.from_array((1.0 + 0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.weight"),
            numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.bias"),
            numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), f"{prefix}.running_mean"),
            numpy_helper.from_array((1.0 + 0.1 * rng.random(c)).astype(np.float32), f"{prefix}.running_var"),
        ]

    c1, classes = 16, 10
    inits = [
        weight("stem.conv.weight", c1, 3, 3, 3), *batchnorm_params("stem.bn", c1),
        weight("block.conv.weight", c1, c1, 3, 3), numpy_helper.from_array(np.zeros(c1, np.float32),
                                                                           "block.conv.bias"),
        *batchnorm_params("block.bn", c1),
        weight("fc.weight", classes, c1), numpy_helper.from_array((0.01 * rng.standard_normal(classes))
                                                                  .astype(np.float32), "fc.bias"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_index"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    bn = ["weight", "bias", "running_mean", "running_var"]
    nodes = [
        helper.make_node("Conv", ["x", "stem.conv.weight"], ["stem_conv"], name="stem.conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["stem_conv"] + [f"stem.bn.{n}" for n in bn], ["stem_bn"],
                         name="stem.bn", epsilon=1e-5),
        helper.make_node("Relu", ["stem_bn"], ["stem_relu"], name="stem.relu"),
        helper.make_node("MaxPool", ["stem_relu"], ["pool"], name="stem.pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["pool", "block.conv.weight", "block.conv.bias"], ["block_conv"],
                         name="block.conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["block_conv"] + [f"block.bn.{n}" for n in bn], ["block_bn"],
                         name="block.bn", epsilon=1e-5),
        helper.make_node("Relu", ["block_bn"], ["block_relu"], name="block.relu"),
        helper.make_node("Add", ["block_relu", "pool"], ["residual"], name="block.add"),
        helper.make_node("GlobalAveragePool", ["residual"], ["gap"], name="head.gap"),
        helper.make_node("Shape", ["gap"], ["gap_shape"], name="head.shape"),
        helper.make_node("Gather", ["gap_shape", "zero_index"], ["batch"], name="head.batch", axis=0),
        helper.make_node("Concat", ["batch", "minus_one"], ["flat_shape"], name="head.flat_shape", axis=0),
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="head.flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="head.fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="head.softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="memplan.examples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    import onnx
    path = HERE / "tiny_cnn.onnx"
    onnx.save(tiny_cnn(), str(path))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
