"""The convolution passes and ``canonicalize`` on the text IR: a small ``.mir`` in, one pass, the
expected ``.mir`` out (structural equality, as ``test_passes_on_text.py``), plus a check that the
rewritten graph computes what the original did (the reference interpreter, ``ir/interpret.py``).

Weights are not part of the text form: each test sets small random tensors of the declared shapes
(fixed seed) in ``graph.weights`` after parsing, as the passes that read them need."""
import pytest
import torch

import memplan.passes  # noqa: F401  (registers the passes)
from memplan.ir.interpret import run_graph
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph
from memplan.passes.mkldnn_conv import available
from memplan.passes.options import check_options
from memplan.passes.registry import PASSES, PassContext, option_passes
from memplan.target import load_target


def random_weights(text: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tensor of its declared shape for every param of ``text``, in (0.5, 1.5) so that batch norm
    variances are positive."""
    gen = torch.Generator().manual_seed(seed)
    return {p.name: torch.rand([int(d) for d in p.type.shape], generator=gen) + 0.5 for p in parse(text).params}


def run_pass(name: str, text: str, weights: dict | None = None, **options):
    """``text`` parsed, its weights set, pass ``name`` run once (options checked as the pipeline checks
    them, the options of the passes ``name`` runs inside included: ``legalize`` takes ``conv_kernel``)."""
    graph = parse(text)
    graph.weights.update(weights or {})
    ctx = PassContext(load_target("cpu"), None, check_options(option_passes([name]), options))
    return PASSES[name].fn(graph, ctx)


def assert_same(got, expected_text: str):
    expected = parse(expected_text)
    assert got == expected, f"got:\n{print_graph(got)}\nexpected:\n{print_graph(expected)}"


def assert_computes_the_same(before_text: str, after, weights: dict, seed: int = 1):
    """``after`` (a graph whose weights are set) gives the outputs of ``before_text`` on random inputs,
    with eager's layout (a pass may change layouts inside, never those of the graph outputs)."""
    before = parse(before_text)
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn([int(d) for d in v.type.shape], generator=gen) for v in before.inputs]
    want = run_graph(before, inputs, weights)
    got = run_graph(after, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
        assert g.stride() == w.stride()


def assert_rewrites(name: str, before: str, expected: str, **options):
    """Pass ``name`` on ``before`` (random weights) gives ``expected``, and both compute the same."""
    weights = random_weights(before)
    got = run_pass(name, before, weights, **options)
    assert_same(got, expected)
    assert_computes_the_same(before, got, weights)
    return got, weights



# --- fold_batchnorm ---------------------------------------------------------------------------

CONV_BN = """graph g(%x: f32[1, 2, 6, 6]) {
  param %conv.weight: f32[4, 2, 3, 3]
  param %conv.bias: f32[4]
  param %bn.weight: f32[4]
  param %bn.bias: f32[4]
  param %bn.running_mean: f32[4]
  param %bn.running_var: f32[4]
  %conv: f32[1, 4, 4, 4] = aten.convolution.default(%x, %conv.weight, %conv.bias, [1, 1], [0, 0], [1, 1], False, [0, 0], 1) loc('conv', 'aten.conv2d')
  %bn: f32[1, 4, 4, 4], %bn_mean: f32[0], %bn_rstd: f32[0] = aten._native_batch_norm_legit_no_training.default(%conv, %bn.weight, %bn.bias, %bn.running_mean, %bn.running_var, 0.1, 1e-05) loc('bn', 'aten.batch_norm')
  %relu: f32[1, 4, 4, 4] = aten.relu.default(%bn)
  return %relu
}"""


def test_fold_batchnorm_folds_into_the_convolution_before_it():
    # The batch norm goes; its reader (the relu) reads the convolution, which now takes two new params:
    # the weight scaled per output channel and the folded bias. The old params stay (unread):
    # canonicalize, later in the pipeline, drops them. Names do not depend on the weights' values.
    weights = random_weights(CONV_BN)
    got = run_pass("fold_batchnorm", CONV_BN, weights)
    assert_same(got, """graph g(%x: f32[1, 2, 6, 6]) {
  param %conv.weight: f32[4, 2, 3, 3]
  param %conv.bias: f32[4]
  param %bn.weight: f32[4]
  param %bn.bias: f32[4]
  param %bn.running_mean: f32[4]
  param %bn.running_var: f32[4]
  param %conv.weight.bn_folded: f32[4, 2, 3, 3]
  param %conv.bias.bias_bn_folded: f32[4]
  %conv: f32[1, 4, 4, 4] = aten.convolution.default(%x, %conv.weight.bn_folded, %conv.bias.bias_bn_folded, [1, 1], [0, 0], [1, 1], False, [0, 0], 1) loc('conv', 'aten.conv2d + aten._native_batch_norm_legit_no_training')
  %relu: f32[1, 4, 4, 4] = aten.relu.default(%conv)
  return %relu
}""")
    # the folded tensors: W·s and (c − μ)·s + β with s = γ / sqrt(σ² + ε) per output channel
    w, c = weights["conv.weight"], weights["conv.bias"]
    g, b, mu, var = (weights[f"bn.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
    s = g / torch.sqrt(var + 1e-05)
    torch.testing.assert_close(got.weights["conv.weight.bn_folded"], w * s.reshape(-1, 1, 1, 1))
    torch.testing.assert_close(got.weights["conv.bias.bias_bn_folded"], (c - mu) * s + b)
    assert got.weights["conv.weight"] is weights["conv.weight"], "the original weights are left as they were"
    assert_computes_the_same(CONV_BN, got, weights)


def test_fold_batchnorm_gives_a_convolution_without_bias_one():
    # no convolution bias: the folded bias is −μ·s + β, a new param named after the convolution node
    text = CONV_BN.replace("  param %conv.bias: f32[4]\n", "").replace("%conv.weight, %conv.bias,", "%conv.weight, None,")
    got, weights = assert_rewrites("fold_batchnorm", text, """graph g(%x: f32[1, 2, 6, 6]) {
  param %conv.weight: f32[4, 2, 3, 3]
  param %bn.weight: f32[4]
  param %bn.bias: f32[4]
  param %bn.running_mean: f32[4]
  param %bn.running_var: f32[4]
  param %conv.weight.bn_folded: f32[4, 2, 3, 3]
  param %conv.bias_bn_folded: f32[4]
  %conv: f32[1, 4, 4, 4] = aten.convolution.default(%x, %conv.weight.bn_folded, %conv.bias_bn_folded, [1, 1], [0, 0], [1, 1], False, [0, 0], 1) loc('conv', 'aten.conv2d + aten._native_batch_norm_legit_no_training')
  %relu: f32[1, 4, 4, 4] = aten.relu.default(%conv)
  return %relu
}""")
    s = weights["bn.weight"] / torch.sqrt(weights["bn.running_var"] + 1e-05)
    torch.testing.assert_close(got.weights["conv.bias_bn_folded"], -weights["bn.running_mean"] * s + weights["bn.bias"])
    assert_computes_the_same(text, got, weights)


@pytest.mark.parametrize("case", ["conv output read twice", "statistics without data"])
def test_fold_batchnorm_leaves_what_it_cannot_fold(case):
    text, weights = CONV_BN, random_weights(CONV_BN)
    if case == "conv output read twice":  # folding would change what the other reader sees
        text = text.replace("aten.relu.default(%bn)", "aten.add.Tensor(%bn, %conv)")
    else:  # the statistics are not known constants
        del weights["bn.running_var"]
    assert_same(run_pass("fold_batchnorm", text, weights), text)


# --- canonicalize -----------------------------------------------------------------------------

CANON = """graph g(%x: f32[2, 3, 4]) {
  param %w: f32[4]
  param %unused: f32[4]
  %c: f32[2, 3, 4] = aten.clone.default(%x)
  %d: f32[2, 3, 4] = aten.detach.default(%c)
  %m: f32[2, 3, 4] = aten.mul.Tensor(%d, %w)
  %dead: f32[2, 3, 4] = aten.exp.default(%m)
  %dead2: f32[2, 3, 4] = aten.neg.default(%dead)
  %r: f32[6, 4] = aten.reshape.default(%m, [6, 4])
  %t: f32[4, 6] = aten.permute.default(%r, [1, 0])
  %r2: f32[24] = aten.reshape.default(%t, [24])
  %relu: f32[24] = aten.relu.default(%r2)
  %out: f32[24] = aten.clone.default(%relu)
  return %out
}"""


def test_canonicalize_forwards_copies_lowers_reshapes_and_relu_and_drops_dead_code():
    # - clone + detach of %x (a chain of identity copies) are forwarded: %m reads %x;
    # - %dead and %dead2 reach no output and go, and so does %unused (its data too);
    # - reshape of the contiguous %m becomes a view; reshape of the transposed %t cannot be a view:
    #   a contiguous copy (%r2_contiguous) and a view;
    # - relu becomes clamp_min(·, 0), its source op remembered in its loc;
    # - the clone that is the graph output stays (the caller gets a fresh tensor, as eager's).
    weights = random_weights(CANON)
    got = run_pass("canonicalize", CANON, weights)
    assert_same(got, """graph g(%x: f32[2, 3, 4]) {
  param %w: f32[4]
  %m: f32[2, 3, 4] = aten.mul.Tensor(%x, %w)
  %r: f32[6, 4] = aten.view.default(%m, [6, 4])
  %t: f32[4, 6] = aten.permute.default(%r, [1, 0])
  %r2_contiguous: f32[4, 6] = aten.clone.default(%t, memory_format=torch.contiguous_format)
  %r2: f32[24] = aten.view.default(%r2_contiguous, [24])
  %relu: f32[24] = aten.clamp_min.default(%r2, 0) loc('', 'aten.relu.default')
  %out: f32[24] = aten.clone.default(%relu)
  return %out
}""")
    assert set(got.weights) == {"w"}
    assert_computes_the_same(CANON, got, weights)


def test_canonicalize_keeps_the_copies_outputs_need_and_copies_returned_weights():
    # - %c stays: a graph output (%v) views it, so removing it would hand out a view of the input %x;
    # - %p (clone, preserve_format) and %a (alias) are identity copies: forwarded, %e reads %x;
    # - %cc (clone to contiguous_format of a transposed view) changes the layout: it stays;
    # - %wt is a view of the weight %w returned as an output: copied at the end (%wt_copy).
    text = """graph g(%x: f32[2, 3]) {
  param %w: f32[3, 2]
  %c: f32[2, 3] = aten.clone.default(%x)
  %v: f32[6] = aten.view.default(%c, [6])
  %p: f32[2, 3] = aten.clone.default(%x, memory_format=torch.preserve_format)
  %a: f32[2, 3] = aten.alias.default(%p)
  %e: f32[2, 3] = aten.exp.default(%a)
  %t: f32[3, 2] = aten.permute.default(%x, [1, 0])
  %cc: f32[3, 2] = aten.clone.default(%t, memory_format=torch.contiguous_format)
  %s: f32[3, 2] = aten.neg.default(%cc)
  %wt: f32[2, 3] = aten.permute.default(%w, [1, 0])
  return %v, %e, %s, %wt
}"""
    weights = random_weights(text)
    got = run_pass("canonicalize", text, weights)
    assert_same(got, """graph g(%x: f32[2, 3]) {
  param %w: f32[3, 2]
  %c: f32[2, 3] = aten.clone.default(%x)
  %v: f32[6] = aten.view.default(%c, [6])
  %e: f32[2, 3] = aten.exp.default(%x)
  %t: f32[3, 2] = aten.permute.default(%x, [1, 0])
  %cc: f32[3, 2] = aten.clone.default(%t, memory_format=torch.contiguous_format)
  %s: f32[3, 2] = aten.neg.default(%cc)
  %wt: f32[2, 3] = aten.permute.default(%w, [1, 0])
  %wt_copy: f32[2, 3] = aten.clone.default(%wt) loc('', 'copy of a weight returned as an output')
  return %v, %e, %s, %wt_copy
}""")
    inputs = [torch.randn(2, 3)]
    (_v, _e, _s, wt) = run_graph(got, inputs)
    assert wt.data_ptr() != weights["w"].data_ptr(), "a returned weight is a copy"


# --- mkldnn_conv and legalize -----------------------------------------------------------------

needs_onednn = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN")

CONV_RELU_FLATTEN = """graph g(%x: f32[1, 3, 4, 4]) {
  param %c.weight: f32[4, 3, 1, 1]
  param %c.bias: f32[4]
  %conv: f32[1, 4, 4, 4] = aten.convolution.default(%x, %c.weight, %c.bias, [1, 1], [0, 0], [1, 1], False, [0, 0], 1) loc('c', 'aten.conv2d')
  %relu: f32[1, 4, 4, 4] = aten.relu.default(%conv) loc('', 'aten.relu')
  %flat: f32[1, 64] = aten.view.default(%relu, [1, 64]) loc('', 'aten.flatten')
  return %flat
}"""

CONV_RELU_FLATTEN_ONEDNN = """graph g(%x: f32[1, 3, 4, 4]) {
  param %c.weight: f32[4, 3, 1, 1]
  param %c.bias: f32[4]
  %x_channels_last: f32[1, 3, 4, 4] = aten.clone.default(%x, memory_format=torch.channels_last) loc('c', 'aten.conv2d + aten.relu')
  %relu: f32[1, 4, 4, 4] = memplan.mkldnn_conv2d(%x_channels_last, %c.weight, %c.bias, [1, 1], [0, 0], [1, 1], 1, 'relu') [conv] loc('c', 'aten.conv2d + aten.relu')
  %flat_contiguous: f32[1, 4, 4, 4] = aten.clone.default(%relu, memory_format=torch.contiguous_format) loc('', 'aten.flatten')
  %flat: f32[1, 64] = aten.view.default(%flat_contiguous, [1, 64]) loc('', 'aten.flatten')
  return %flat
}"""


@needs_onednn
@pytest.mark.parametrize("name", ["mkldnn_conv", "legalize"])
def test_mkldnn_conv_fuses_the_relu_and_repairs_layouts(name):
    # The convolution (f32, weights a param with data) becomes memplan.mkldnn_conv2d with activation
    # 'relu': the relu, its output's only reader, is absorbed (the node keeps the name %conv as its
    # label, its output is the relu's value). The graph input is copied channels-last once, before
    # the convolution; the output is channels-last, so the flatten (a view) cannot serve it as is:
    # a contiguous copy first. legalize (PyTorch backend) runs exactly this pass.
    assert_rewrites(name, CONV_RELU_FLATTEN, CONV_RELU_FLATTEN_ONEDNN)


RESIDUAL = """graph g(%x: f32[1, 4, 4, 4]) {
  param %c1.weight: f32[8, 4, 3, 3]
  param %c2.weight: f32[8, 4, 1, 1]
  %conv: f32[1, 8, 4, 4] = aten.convolution.default(%x, %c1.weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1) loc('c1', 'aten.conv2d')
  %conv_1: f32[1, 8, 4, 4] = aten.convolution.default(%x, %c2.weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1) loc('c2', 'aten.conv2d')
  %add: f32[1, 8, 4, 4] = aten.add.Tensor(%conv, %conv_1) loc('', 'aten.add')
  %relu: f32[1, 8, 4, 4] = aten.relu.default(%add) loc('', 'aten.relu')
  %sum: f32[1, 8] = aten.sum.dim_IntList(%relu, [2, 3]) loc('', 'aten.sum')
  return %sum
}"""


@needs_onednn
@pytest.mark.parametrize("name", ["mkldnn_conv", "legalize"])
def test_mkldnn_conv_fuses_a_residual_add_and_the_relu_after_it(name):
    # %conv's only reader is the add: it becomes memplan.mkldnn_conv2d_add with the add's other operand
    # (%conv_1, the 1x1 shortcut) as its residual and the relu after the add fused too; it moves to
    # where the add ran, after %conv_1. The shortcut's reader, the add, is already absorbed: it stays a
    # plain mkldnn_conv2d ('none'). Both read one channels-last copy of %x (made before the first of
    # them in the new order). The sum of a channels-last tensor over H, W needs no repair.
    assert_rewrites(name, RESIDUAL, """graph g(%x: f32[1, 4, 4, 4]) {
  param %c1.weight: f32[8, 4, 3, 3]
  param %c2.weight: f32[8, 4, 1, 1]
  %x_channels_last: f32[1, 4, 4, 4] = aten.clone.default(%x, memory_format=torch.channels_last) loc('c2', 'aten.conv2d')
  %conv_1: f32[1, 8, 4, 4] = memplan.mkldnn_conv2d(%x_channels_last, %c2.weight, None, [1, 1], [0, 0], [1, 1], 1, 'none') loc('c2', 'aten.conv2d')
  %relu: f32[1, 8, 4, 4] = memplan.mkldnn_conv2d_add(%x_channels_last, %c1.weight, None, [1, 1], [1, 1], [1, 1], 1, %conv_1, 'relu') [conv] loc('c1', 'aten.conv2d + aten.add + aten.relu')
  %sum: f32[1, 8] = aten.sum.dim_IntList(%relu, [2, 3]) loc('', 'aten.sum')
  return %sum
}""")


@needs_onednn
def test_mkldnn_conv_residual_that_is_also_the_input_and_an_output_kept_in_eager_layout():
    # relu(conv2(r) + r) with r = relu(conv1(x)): both relus fused, the add fused with r (the second
    # convolution's own input) as the residual; the graph output is copied back to the contiguous
    # layout eager returns (%relu_1_eager_layout).
    text = """graph g(%x: f32[1, 3, 8, 8]) {
  param %c1.weight: f32[8, 3, 3, 3]
  param %c1.bias: f32[8]
  param %c2.weight: f32[8, 8, 3, 3]
  %conv: f32[1, 8, 8, 8] = aten.convolution.default(%x, %c1.weight, %c1.bias, [1, 1], [1, 1], [1, 1], False, [0, 0], 1) loc('c1', 'aten.conv2d')
  %relu: f32[1, 8, 8, 8] = aten.relu.default(%conv) loc('', 'aten.relu')
  %conv_1: f32[1, 8, 8, 8] = aten.convolution.default(%relu, %c2.weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1) loc('c2', 'aten.conv2d')
  %add: f32[1, 8, 8, 8] = aten.add.Tensor(%conv_1, %relu) loc('', 'aten.add')
  %relu_1: f32[1, 8, 8, 8] = aten.relu.default(%add) loc('', 'aten.relu')
  return %relu_1
}"""
    weights = random_weights(text)
    got = run_pass("mkldnn_conv", text, weights)
    assert_same(got, """graph g(%x: f32[1, 3, 8, 8]) {
  param %c1.weight: f32[8, 3, 3, 3]
  param %c1.bias: f32[8]
  param %c2.weight: f32[8, 8, 3, 3]
  %x_channels_last: f32[1, 3, 8, 8] = aten.clone.default(%x, memory_format=torch.channels_last) loc('c1', 'aten.conv2d + aten.relu')
  %relu: f32[1, 8, 8, 8] = memplan.mkldnn_conv2d(%x_channels_last, %c1.weight, %c1.bias, [1, 1], [1, 1], [1, 1], 1, 'relu') [conv] loc('c1', 'aten.conv2d + aten.relu')
  %relu_1: f32[1, 8, 8, 8] = memplan.mkldnn_conv2d_add(%relu, %c2.weight, None, [1, 1], [1, 1], [1, 1], 1, %relu, 'relu') [conv_1] loc('c2', 'aten.conv2d + aten.add + aten.relu')
  %relu_1_eager_layout: f32[1, 8, 8, 8] = aten.clone.default(%relu_1, memory_format=torch.contiguous_format) loc('c2', 'aten.conv2d + aten.add + aten.relu')
  return %relu_1_eager_layout
}""")


@pytest.mark.parametrize("case", ["weight without data", "weight an input", "f64", "conv_kernel=aten"])
def test_mkldnn_conv_leaves_convolutions_it_cannot_take(case):
    # eligible: f32, weight a param whose data the graph holds (it is prepacked), not transposed, 2-D;
    # with conv_kernel="aten" the pass changes nothing (lower_conv decides about aten convolutions)
    text, weights, options = CONV_RELU_FLATTEN, random_weights(CONV_RELU_FLATTEN), {}
    if case == "weight without data":
        del weights["c.weight"]
    elif case == "weight an input":
        text = text.replace("graph g(%x: f32[1, 3, 4, 4]) {\n  param %c.weight: f32[4, 3, 1, 1]\n",
                            "graph g(%x: f32[1, 3, 4, 4], %c.weight: f32[4, 3, 1, 1]) {\n")
        del weights["c.weight"]
    elif case == "f64":
        text = text.replace("f32", "f64")
        weights = random_weights(text)
    else:
        options["conv_kernel"] = "aten"
    assert_same(run_pass("legalize", text, weights, **options), text)


# --- lower_conv -------------------------------------------------------------------------------

CONVS = """graph g(%x: f32[1, 2, 5, 5]) {
  param %c1.weight: f32[4, 2, 3, 3]
  param %c1.bias: f32[4]
  param %c2.weight: f32[3, 4, 1, 1]
  param %c3.weight: f32[6, 2, 2, 2]
  %conv: f32[1, 4, 3, 3] = aten.convolution.default(%x, %c1.weight, %c1.bias, [2, 2], [1, 1], [1, 1], False, [0, 0], 1) loc('c1', 'aten.conv2d')
  %conv_1: f32[1, 3, 3, 3] = aten.convolution.default(%conv, %c2.weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1) loc('c2', 'aten.conv2d')
  %conv_2: f32[1, 6, 3, 3] = aten.convolution.default(%conv, %c3.weight, None, [1, 1], [1, 1], [2, 2], False, [0, 0], 2) loc('c3', 'aten.conv2d')
  return %conv_1, %conv_2
}"""

# what lowering c2 (1x1, stride 1, no bias) gives: no column buffer, its contiguous input viewed as
# [Cin, H·W], the weight as [Cout, Cin], one mm, the node itself a view of the GEMM's result
LOWERED_C2 = """  %conv_1_cols: f32[4, 9] = aten.view.default(%conv, [4, 9]) loc('c2', 'aten.conv2d')
  %conv_1_w: f32[3, 4] = aten.view.default(%c2.weight, [3, 4]) loc('c2', 'aten.conv2d')
  %conv_1_gemm: f32[3, 9] = aten.mm.default(%conv_1_w, %conv_1_cols) loc('c2', 'aten.conv2d')
  %conv_1: f32[1, 3, 3, 3] = aten.view.default(%conv_1_gemm, [1, 3, 3, 3]) loc('c2', 'aten.conv2d')
"""
HEADER = CONVS.split("  %conv:")[0]  # the signature and params
C1 = next(line for line in CONVS.splitlines() if line.startswith("  %conv: ")) + "\n"  # c1 unchanged
C3_AND_RETURN = "  %conv_2:" + CONVS.split("  %conv_2:")[1]


def test_lower_conv_always_lowers_every_eligible_convolution():
    # c1 (3x3, stride 2, padding 1, bias): im2col of %x into [1, Cin·kh·kw = 18, Hout·Wout = 9]
    # (im2col takes kernel, dilation, padding, stride), viewed 2-D, the weight viewed [4, 18], the bias
    # [4, 1], addmm, and %conv a view [1, 4, 3, 3] of the GEMM's result: its readers are unchanged.
    # c2 (1x1, stride 1): no column buffer (LOWERED_C2). c3 has 2 groups: not eligible, stays.
    weights = random_weights(CONVS)
    got = run_pass("lower_conv", CONVS, weights, conv_lowering="always", measure_scratch=False)
    assert_same(got, HEADER + """  %conv_im2col: f32[1, 18, 9] = aten.im2col.default(%x, [3, 3], [1, 1], [1, 1], [2, 2]) loc('c1', 'aten.conv2d')
  %conv_cols: f32[18, 9] = aten.view.default(%conv_im2col, [18, 9]) loc('c1', 'aten.conv2d')
  %conv_w: f32[4, 18] = aten.view.default(%c1.weight, [4, 18]) loc('c1', 'aten.conv2d')
  %conv_b: f32[4, 1] = aten.view.default(%c1.bias, [4, 1]) loc('c1', 'aten.conv2d')
  %conv_gemm: f32[4, 9] = aten.addmm.default(%conv_b, %conv_w, %conv_cols) loc('c1', 'aten.conv2d')
  %conv: f32[1, 4, 3, 3] = aten.view.default(%conv_gemm, [1, 4, 3, 3]) loc('c1', 'aten.conv2d')
""" + LOWERED_C2 + C3_AND_RETURN)
    assert_computes_the_same(CONVS, got, weights)


def test_lower_conv_never_changes_nothing():
    weights = random_weights(CONVS)
    assert_same(run_pass("lower_conv", CONVS, weights, conv_lowering="never", measure_scratch=False), CONVS)


def test_lower_conv_auto_without_measurements_lowers_only_what_needs_no_workspace():
    # "auto" first lowers every convolution whose workspace is no larger than its scratch; with
    # measure_scratch=False the scratch is the static estimate (0 for a convolution: it has an out=
    # form), so only the 1x1 convolution (workspace 0) is lowered, and there is no measured peak to
    # try the others against
    weights = random_weights(CONVS)
    got = run_pass("lower_conv", CONVS, weights, conv_lowering="auto", measure_scratch=False)
    assert_same(got, HEADER + C1 + LOWERED_C2 + C3_AND_RETURN)
    assert_computes_the_same(CONVS, got, weights)


def test_lower_conv_leaves_batches_and_weights_without_data():
    # eligible: batch 1, one group, not transposed, weights a contiguous param with data
    batch2 = CONVS.replace("%x: f32[1, 2, 5, 5]", "%x: f32[2, 2, 5, 5]").replace("f32[1, 4, 3, 3]", "f32[2, 4, 3, 3]") \
        .replace("f32[1, 3, 3, 3]", "f32[2, 3, 3, 3]").replace("f32[1, 6, 3, 3]", "f32[2, 6, 3, 3]")
    assert_same(run_pass("lower_conv", batch2, random_weights(batch2), conv_lowering="always"), batch2)
    assert_same(run_pass("lower_conv", CONVS, {}, conv_lowering="always"), CONVS)
