"""The text form of planned graphs: attrs, storages, memory spaces, allocations, reuses,
recomputes and scratch print and parse back; every bad annotation is an IRParseError."""
import math
import time

import pytest

from memplan.errors import IRParseError
from memplan.ir import Graph, TensorType
from memplan.ir.graph import Alloc
from memplan.ir.parser import parse
from memplan.ir.printer import print_graph

PLANNED = """\
graph main(%x: f32[1, 128]@dram) {
  attr target = "cpu"
  attr memory_budget = 1048576
  attr capacity.dram = 25769803776
  param %w: f32[64, 128]@dram  # 32.00 KiB
  storage %storage_dram = memplan.storage("dram", 4096)  # 4.00 KiB
  %t: f32[128, 64]@dram = aten.t.default(%w) loc('fc', 'aten.linear')  # view of %w
  %mm: f32[1, 64]@dram slot(%storage_dram, 0, [64, 1]) = aten.mm.default(%x, %t) scratch(512) loc('fc', 'aten.linear')  # 256 B
  %r: f32[1, 64]@dram = aten.relu.default(%mm) reuses(%mm)  # in place of %mm
  %g: f32[1, 64]@dram kernel = aten.gelu.default(%r)  # 256 B
  %g.r1: f32[1, 64]@dram own([64, 1]) = aten.gelu.default(%r) [g.r2] recomputes(%g)  # 256 B
  return %g.r1
}"""


def rejected(text: str, match: str) -> IRParseError:
    start = time.monotonic()
    with pytest.raises(IRParseError, match=match) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith("line ") and "\n" not in message and len(message) < 400, message
    assert time.monotonic() - start < 10
    return info.value


def test_planned_example_parses_and_prints_back_verbatim():
    g = parse(PLANNED)
    assert print_graph(g) == PLANNED
    assert parse(print_graph(g)) == g
    assert g.attrs == {"target": "cpu", "memory_budget": 1048576, "capacity.dram": 25769803776}
    assert list(g.attrs) == ["target", "memory_budget", "capacity.dram"]
    (storage,) = g.storages.values()
    assert (storage.name, storage.tier, storage.nbytes) == ("storage_dram", "dram", 4096)
    assert g.inputs[0].type.space == "dram" and g.params[0].type.space == "dram"
    t, mm, r, gelu, clone = g.nodes
    assert mm.outputs[0].alloc == Alloc("slot", "storage_dram", 0, (64, 1)) and mm.scratch == 512
    assert t.outputs[0].alloc is None and t.scratch == 0
    assert r.reuses is mm.outputs[0]                       # the Value itself, not its name
    assert gelu.outputs[0].alloc == Alloc("kernel")
    assert clone.name == "g.r2" and clone.recomputes is gelu.outputs[0]
    assert clone.outputs[0].alloc == Alloc("own", strides=(64, 1))
    assert clone.outputs[0].producer is clone
    # names stay unique: the storage's name is taken for later fresh names
    assert g.fresh_name("storage_dram") == "storage_dram_1"


def planned_graph() -> Graph:
    """A graph with every planned construct, built through the API."""
    g = Graph("planned")
    g.attrs.update({"target": "my-npu", "memory_budget": 2**30, "tolerance": 0.25, "neg": -3, "big": 2**62,
                    "quoted": "it's a \"test\" \\ #1 \u2028 ß 🙂", "flag": True, "off": False, "unset": None,
                    "huge": math.inf, "tiny": -math.inf, "ratio": 1e-05, "empty": ""})
    x = g.add_input("x", TensorType("f32", (4, 8), "dram"))
    w = g.add_param("w", TensorType("f16", (8, 8), "hbm-1"))
    b = g.add_param("b", TensorType("f32", (8,)))                  # no space
    sram = g.add_storage("sram", 1024)
    dram = g.add_storage("dram", 2**62 - 1, name="arena")
    empty = g.add_storage("l2", 0)
    (mm,) = g.add_node("aten.mm.default", (x, w), {}, [TensorType("f32", (4, 8), "sram")], source="fc")
    mm.alloc = Alloc("slot", sram.name, 0, (8, 1))
    mm.producer.scratch = 4096
    (add,) = g.add_node("aten.add_.Tensor", (mm, b), {}, [TensorType("f32", (4, 8), "sram")])
    add.producer.reuses = mm
    add.alloc = Alloc("slot", sram.name, 0, (8, 1))
    (tr,) = g.add_node("aten.t.default", (add,), {}, [TensorType("f32", (8, 4), "sram")])
    tr.alloc = Alloc("slot", sram.name, 0, (1, 8))
    (s,) = g.add_node("aten.sum.default", (tr,), {}, [TensorType("f32", (), "dram")])
    s.alloc = Alloc("own", strides=())
    (e,) = g.add_node("aten.expand.default", (s, [4, 8]), {}, [TensorType("f32", (4, 8), "dram")])
    e.alloc = Alloc("slot", dram.name, 2**62 - 2, (0, -1))
    (k,) = g.add_node("aten.gelu.default", (e,), {}, [TensorType("f32", (4, 8), "dram")], name="my gelu")
    k.alloc = Alloc("kernel")
    clone = g.clone_node(mm.producer, before=k.producer)
    clone.outputs[0].alloc = Alloc("slot", empty.name, 5, (8, 1))
    clone.scratch = 1
    (o,) = g.add_node("aten.add.Tensor", (k, clone.outputs[0]), {}, [TensorType("f32", (4, 8), "dram")])
    o.alloc = Alloc("own", strides=(8, 1))
    # a sub-graph keeps its own plan
    inner = Graph("body")
    a = inner.add_input("a", TensorType("f32", (4, 8), "sram"))
    inner.attrs["tile"] = 2
    st = inner.add_storage("sram", 128)
    (r,) = inner.add_node("aten.relu.default", (a,), {}, [TensorType("f32", (4, 8), "sram")])
    r.alloc = Alloc("slot", st.name, 0, (8, 1))
    inner.outputs = [r]
    (f,) = g.add_node("memplan.fused", (o,), {}, [TensorType("f32", (4, 8), "dram")], subgraph=inner)
    f.alloc = Alloc("kernel")
    g.outputs = [f, s]
    return g


def test_planned_graph_round_trip():
    g = planned_graph()
    text = print_graph(g)
    back = parse(text)
    assert back == g
    assert print_graph(back) == text
    assert back.attrs == g.attrs
    assert [type(v) for v in back.attrs.values()] == [type(v) for v in g.attrs.values()]
    assert {n: (s.tier, s.nbytes) for n, s in back.storages.items()} == \
        {n: (s.tier, s.nbytes) for n, s in g.storages.items()}
    for a, b in zip(g.values(), back.values()):
        assert a.type == b.type and a.alloc == b.alloc, a.name
    for a, b in zip(g.nodes, back.nodes):
        assert a.scratch == b.scratch
        assert (a.reuses and a.reuses.name) == (b.reuses and b.reuses.name)
        assert (a.recomputes and a.recomputes.name) == (b.recomputes and b.recomputes.name)
        for ref in (b.reuses, b.recomputes):       # references are the parsed graph's own values
            assert ref is None or any(ref is v for v in back.values())
    assert back.nodes[-1].subgraph.storages["storage_sram"].nbytes == 128
    assert back.nodes[-1].subgraph.attrs == {"tile": 2}


def test_nan_attr_round_trips():
    g = Graph("n")
    g.attrs["x"] = math.nan
    x = g.add_input("x", TensorType("f32", (1,)))
    g.outputs = [x]
    back = parse(print_graph(g))
    assert back == g and math.isnan(back.attrs["x"])


def test_printed_order_and_spelling():
    lines = print_graph(planned_graph()).split("\n")
    kinds = [line.split()[0] for line in lines[1:]]
    first_param, first_storage = kinds.index("param"), kinds.index("storage")
    assert set(kinds[:first_param]) == {"attr"}
    assert set(kinds[first_param:first_storage]) == {"param"}
    assert lines[1] == '  attr target = "my-npu"'
    assert '  attr unset = None' in lines and '  attr huge = inf' in lines and '  attr tiny = -inf' in lines
    assert '  storage %storage_sram = memplan.storage("sram", 1024)  # 1.00 KiB' in lines
    assert '  storage %storage_l2 = memplan.storage("l2", 0)  # 0 B' in lines
    text = "\n".join(lines)
    assert "%add_: f32[4, 8]@sram slot(%storage_sram, 0, [8, 1]) = aten.add_.Tensor(%mm, %b) reuses(%mm)" in text
    assert "# in place of %mm" in text
    assert "param %b: f32[8]  #" in text and "param %w: f16[8, 8]@hbm-1  #" in text
    assert "%sum: f32[]@dram own([]) = " in text
    assert " recomputes(%mm) scratch(1) loc('fc', '')" in text


def test_printer_rejects_an_attr_it_cannot_write():
    g = Graph("g")
    g.attrs["bad"] = [1, 2]
    with pytest.raises(TypeError, match="graph attribute"):
        print_graph(g)


def graph_text(*body: str, inputs: str = "%x: f32[2, 3]") -> str:
    return f"graph g({inputs}) {{\n" + "".join(f"  {line}\n" for line in body) + "  return %x\n}"


STORAGE = 'storage %s = memplan.storage("dram", 64)'


@pytest.mark.parametrize("body,match", [
    # storages
    (['%y: f32[2, 3] slot(%nowhere, 0, [3, 1]) = aten.relu.default(%x)'],
     r"line 2: slot of %y is in storage %nowhere, which is not declared"),
    (['%y: f32[2, 3] slot(%s, 0, [3, 1]) = aten.relu.default(%x)', STORAGE],
     r"line 2: slot of %y is in storage %s, which is not declared"),
    ([STORAGE, STORAGE], r"line 3: storage %s: the name is already used"),
    (['storage %x = memplan.storage("dram", 64)'], r"line 2: storage %x: the name is already used"),
    ([STORAGE, '%s: f32[2, 3] = aten.relu.default(%x)'], r"line 3: value %s has the name of a storage"),
    ([STORAGE, '%y: f32[2, 3] = aten.relu.default(%x) [s]'], r"line 3: node 's' has the name of a storage"),
    (['storage %s = memplan.storage("dram", 4611686018427387904)'], r"size of storage %s: 4611686018427387904 is not below the limit of 2\*\*62"),
    (['storage %s = memplan.storage("dram", -1)'], r"size of storage %s: -1 is negative"),
    (['storage %s = memplan.storage("dram", 1.5)'], r"expected an integer for size of storage %s"),
    (['storage %s = memplan.storage("dram", 2**10)'], r"expected '\)'"),
    (['storage %s = memplan.storage("dram", ' + "9" * 5000 + ')'], r"integer literal of 5000 digits"),
    (['storage %s = memplan.storage("dr am", 64)'], r"bad tier name 'dr am' of storage %s"),
    (['storage %s = memplan.storage("", 64)'], r"bad tier name '' of storage %s"),
    (['storage %s = memplan.storage(dram, 64)'], r"expected a quoted string"),
    (['storage %s = os.system("dram", 64)'], r"expected memplan.storage"),
    (['storage %s = memplan.storage("dram", 64) extra'], r"unexpected text 'extra'"),
    # allocations
    ([STORAGE, '%y: f32[2, 3] slot(%s, -8, [3, 1]) = aten.relu.default(%x)'], r"line 3: offset of %y: -8 is negative"),
    ([STORAGE, '%y: f32[2, 3] slot(%s, 8.0, [3, 1]) = aten.relu.default(%x)'], r"expected an integer for offset of %y"),
    ([STORAGE, '%y: f32[2, 3] slot(%s, 4+4, [3, 1]) = aten.relu.default(%x)'], r"expected ','"),
    ([STORAGE, '%y: f32[2, 3] slot(%s, 4611686018427387904, [3, 1]) = aten.relu.default(%x)'],
     r"offset of %y: 4611686018427387904 is not below the limit of 2\*\*62"),
    ([STORAGE, '%y: f32[2, 3] slot(%s, 0, [3]) = aten.relu.default(%x)'], r"1 strides for %y, whose type has 2 dims"),
    ([STORAGE, '%y: f32[2, 3] slot(%s, 0, [3, 1, 1]) = aten.relu.default(%x)'], r"more than 2 entries in a list"),
    ([STORAGE, '%y: f32[2, 3] slot(%s, 0, [3, ' + ", ".join(["1"] * 100_000) + ']) = aten.relu.default(%x)'],
     r"more than 2 entries in a list"),
    (['%y: f32[2, 3] own([3, -4611686018427387904]) = aten.relu.default(%x)'], r"-4611686018427387904 is not below the limit"),
    (['%y: f32[2, 3] own([3, s]) = aten.relu.default(%x)'], r"expected an integer for a stride of %y"),
    (['%y: f32[2, 3] own(3, 1) = aten.relu.default(%x)'], r"expected '\['"),
    (['%y: f32[2, 3] heap = aten.relu.default(%x)'], r"unknown allocation 'heap' of %y"),
    (['%y: f32[2, 3] kernel() = aten.relu.default(%x)'], r"expected ',', got '\('"),
    (['param %p: f32[2] kernel'], r"expected ',', got 'kernel'"),     # params have no allocation
    # memory spaces
    (['%y: f32[2, 3]@dr$m = aten.relu.default(%x)'], r"line 2: bad memory space name 'dr\$m' in the type of %y"),
    (['%y: f32[2, 3]@ = aten.relu.default(%x)'], r"bad memory space name ''"),
    (['%y: f32[2, 3]@' + "d" * 65 + ' = aten.relu.default(%x)'], r"bad memory space name 'd+'"),
    (['%y: f32[2, 3]@dram@hbm = aten.relu.default(%x)'], r"bad memory space name 'dram@hbm'"),
    (['%y: f32[2, 3] @dram = aten.relu.default(%x)'], r"unexpected character '@'"),
    (['param %p: f32[2]@"dram"'], r"bad memory space name"),
    # node annotations
    (['%y: f32[2, 3] = aten.relu.default(%x) scratch(-1)'], r"line 2: scratch: -1 is negative"),
    (['%y: f32[2, 3] = aten.relu.default(%x) scratch(4611686018427387904)'], r"scratch: 4611686018427387904 is not below"),
    (['%y: f32[2, 3] = aten.relu.default(%x) scratch(1e3)'], r"expected an integer for scratch"),
    (['%y: f32[2, 3] = aten.relu.default(%x) scratch()'], r"expected an integer for scratch"),
    (['%y: f32[2, 3] = aten.relu.default(%x) recomputes(%nope)'],
     r"line 2: recomputes\(%nope\) names a value not defined before it"),
    (['%y: f32[2, 3] = aten.relu.default(%x) recomputes(%z)', '%z: f32[2, 3] = aten.relu.default(%x)'],
     r"line 2: recomputes\(%z\) names a value not defined before it"),
    (['%y: f32[2, 3] = aten.relu.default(%x) recomputes(%y)'], r"recomputes\(%y\) names a value not defined"),
    (['%y: f32[2, 3] = aten.relu.default(%x) reuses(%w)'], r"reuses\(%w\) names a value the call does not read"),
    (['%y: f32[2, 3] = aten.relu.default(%x) scratch(8) reuses(%x)'], r"unexpected text 'reuses"),
    (['%y: f32[2, 3] = aten.relu.default(%x) loc("a", "b") scratch(8)'], r"unexpected text 'scratch"),
    # attrs
    (['attr a = 1', 'attr a = 2'], r"line 3: attr 'a' is given twice"),
    (['attr a = [1]'], r"expected an int, a float, a quoted string, True, False or None for attr 'a'"),
    (['attr a = %x'], r"expected an int, a float"),
    (['attr a = 1 + 2'], r"unexpected text '\+ 2'"),
    (['attr a = torch.float32'], r"expected an int, a float"),
    (['attr a = os.system("x")'], r"expected an int, a float"),
    (['attr a'], r"expected '='"),
    (['attr = 1'], r"expected an attribute name"),
    (['attr a = ' + "9" * 21], r"integer literal of 21 digits"),
    (['attr a = 99999999999999999999'], r"above the limit"),
    (['attr a = 1.' + "5" * 100], r"longer than 40 characters"),
])
def test_bad_planned_text_is_rejected(body, match):
    rejected(graph_text(*body), match)


def test_space_on_inputs_and_params_and_dashes():
    g = parse(graph_text('param %p: f32[2]@hbm-0_1', '%y: f32[2, 3]@L2 = aten.relu.default(%x)',
                         inputs="%x: f32[2, 3]@dram, %z: i64[]@7"))
    assert [v.type.space for v in g.values()] == ["dram", "7", "hbm-0_1", "L2"]
    assert str(g.inputs[1].type) == "i64[]@7"


def test_annotations_are_optional_and_independent():
    g = parse(graph_text('storage %a = memplan.storage("dram", 64)',
                         '%y: f32[2, 3] = aten.relu.default(%x) scratch(0)',
                         '%z: f32[2, 3]@dram slot(%a, 0, [3, 1]) = aten.relu.default(%y) [n] recomputes(%y) '
                         'loc("m", "aten.relu")'))
    y, z = g.nodes
    assert y.scratch == 0 and y.recomputes is None and y.reuses is None
    assert z.name == "n" and z.recomputes is y.outputs[0] and z.source == "m"
    assert "scratch" not in print_graph(g)
