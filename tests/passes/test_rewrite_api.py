"""The graph rewrite API (memplan.ir.graph): the only way passes change a graph's nodes."""
import pytest

from memplan.ir.graph import Graph
from memplan.ir.types import TensorType

T = TensorType("f32", (2, 3))


def chain():
    """x -> a = relu(x) -> b = neg(a) -> c = add(a, b); returns c."""
    g = Graph("chain")
    x = g.add_input("x", T)
    (a,) = g.add_node("aten.relu.default", (x,), {}, [T], name="a")
    (b,) = g.add_node("aten.neg.default", (a,), {}, [T], name="b")
    (c,) = g.add_node("aten.add.Tensor", (a, b), {}, [T], name="c")
    g.outputs = [c]
    return g, x, a, b, c


def names(g):
    return [n.name for n in g.nodes]


def test_make_node_is_not_placed_and_insert_puts_it_before_or_after():
    g, x, a, b, c = chain()
    node = g.make_node("aten.sigmoid.default", (x,), {}, [T], name="s")
    assert node not in g.nodes and node.outputs[0].producer is node
    g.insert_node(node, before=b.producer)
    assert names(g) == ["a", "s", "b", "c"]
    (t,) = g.add_node("aten.tanh.default", (x,), {}, [T], name="t", after=a.producer)
    assert names(g) == ["a", "t", "s", "b", "c"] and t.producer is g.nodes[1]
    (u,) = g.add_node("aten.exp.default", (x,), {}, [T], name="u", before=a.producer)
    assert names(g)[0] == "u"
    g.insert_node(g.make_node("aten.exp.default", (x,), {}, [T], name="last"))
    assert names(g)[-1] == "last"


def test_insert_takes_before_or_after_not_both_and_only_nodes_of_the_graph():
    g, x, a, b, c = chain()
    node = g.make_node("aten.sigmoid.default", (x,), {}, [T])
    with pytest.raises(ValueError, match="not both"):
        g.insert_node(node, before=b.producer, after=a.producer)
    other, *_ = chain()
    with pytest.raises(KeyError, match="not in graph"):
        g.insert_node(node, before=other.nodes[0])
    assert node not in g.nodes


def test_inserted_names_stay_taken():
    g, x, a, b, c = chain()
    node = g.make_node("aten.sigmoid.default", (x,), {}, [T], name="s")
    g.insert_node(node)
    assert g.fresh_name("s") != "s"


def test_replace_all_uses_rewires_arguments_kwargs_nested_outputs_and_reuses():
    g, x, a, b, c = chain()
    (n,) = g.add_node("aten.cat.default", ([a, b],), {"other": a}, [TensorType("f32", (4, 3))], name="n",
                      after=b.producer)
    c.producer.reuses = a
    g.outputs = [c, a, a]
    (s,) = g.add_node("aten.sigmoid.default", (x,), {}, [T], name="s", before=a.producer)
    changed = g.replace_all_uses(a, s)
    assert changed == 3  # b, n and c
    assert b.producer.args == (s,)
    assert n.producer.args == ([s, b],) and n.producer.kwargs == {"other": s}
    assert c.producer.args == (s, b) and c.producer.reuses is s
    assert g.outputs == [c, s, s]
    assert a.producer.args == (x,), "the old producer is left as it is"


def test_replace_all_uses_after_and_keep():
    g, x, a, b, c = chain()
    (s,) = g.add_node("aten.sigmoid.default", (x,), {}, [T], name="s", before=a.producer)
    assert g.replace_all_uses(a, s, after=b.producer) == 1
    assert b.producer.args == (a,) and c.producer.args == (s, b)
    g2, x2, a2, b2, c2 = chain()
    (s2,) = g2.add_node("aten.sigmoid.default", (x2,), {}, [T], name="s", before=a2.producer)
    assert g2.replace_all_uses(a2, s2, keep=c2.producer) == 1
    assert b2.producer.args == (s2,) and c2.producer.args == (a2, b2)


def test_replace_all_uses_leaves_the_new_values_producer_reading_the_old():
    """relu(a) replacing a: the relu itself must keep reading a (no self-loop)."""
    g, x, a, b, c = chain()
    (r,) = g.add_node("aten.relu.default", (a,), {}, [T], name="r", after=a.producer)
    g.replace_all_uses(a, r)
    assert r.producer.args == (a,)
    assert b.producer.args == (r,) and c.producer.args == (r, b)


def test_erase_refuses_a_node_still_read():
    g, x, a, b, c = chain()
    with pytest.raises(ValueError, match="cannot erase node a: .*still read"):
        g.erase_node(a.producer)
    with pytest.raises(ValueError, match="graph outputs"):
        g.erase_node(c.producer)
    assert names(g) == ["a", "b", "c"]


def test_erase_takes_out_an_unread_node_which_can_go_back():
    g, x, a, b, c = chain()
    (d,) = g.add_node("aten.exp.default", (b,), {}, [T], name="d")
    node = g.erase_node(d.producer)
    assert node is d.producer and names(g) == ["a", "b", "c"]
    g.insert_node(node, after=b.producer)
    assert names(g) == ["a", "b", "d", "c"]
    g.replace_all_uses(b, d, after=d.producer)
    assert c.producer.args == (a, d)
    with pytest.raises(ValueError):  # c reads d now
        g.erase_node(d.producer)


def test_replace_node_rewires_every_reader_and_takes_the_old_one_out():
    g, x, a, b, c = chain()
    old = b.producer
    new = g.make_node("aten.sigmoid.default", (a,), {}, [T], name="sig")
    assert g.replace_node(old, new) is old
    assert names(g) == ["a", "sig", "c"]
    assert c.producer.args == (a, new.outputs[0])
    with pytest.raises(ValueError, match="outputs"):
        g.replace_node(new, g.make_node("aten.max.dim", (a, 0), {}, [T, TensorType("i64", (3,))]))
    assert names(g) == ["a", "sig", "c"]


def test_replace_node_of_a_graph_output():
    g, x, a, b, c = chain()
    new = g.make_node("aten.mul.Tensor", (a, b), {}, [T], name="m")
    g.replace_node(c.producer, new)
    assert g.outputs == [new.outputs[0]] and names(g) == ["a", "b", "m"]


def test_clone_node_names_the_copy_and_records_what_it_recomputes():
    g, x, a, b, c = chain()
    clone = g.clone_node(a.producer, before=c.producer)
    assert clone.name == "a.r1" and [v.name for v in clone.outputs] == ["a.r1"]
    assert clone.recomputes is a and clone.op == a.producer.op and clone.args == (x,)
    assert clone.outputs[0] is not a and clone.outputs[0].producer is clone
    assert names(g) == ["a", "b", "a.r1", "c"]
    again = g.clone_node(a.producer)
    assert again.outputs[0].name == "a.r2" and names(g)[-1] == "a.r2"
    plain = g.clone_node(b.producer, suffix="copy", recompute=False, after=b.producer)
    assert plain.outputs[0].name == "b.copy1" and plain.recomputes is None
    assert names(g) == ["a", "b", "b.copy1", "a.r1", "c", "a.r2"]
    assert "%a.r1: f32[2, 3] = aten.relu.default(%x) recomputes(%a)" in str(g)


def test_clone_then_replace_uses_makes_a_recomputation():
    g, x, a, b, c = chain()
    clone = g.clone_node(a.producer, before=c.producer)
    g.replace_all_uses(a, clone.outputs[0], after=clone)
    assert c.producer.args == (clone.outputs[0], b) and b.producer.args == (a,)


def test_reorder_takes_a_permutation_only():
    g, x, a, b, c = chain()
    na, nb, nc = g.nodes
    (s,) = g.add_node("aten.sigmoid.default", (x,), {}, [T], name="s")
    ns = s.producer
    g.reorder([ns, na, nb, nc])
    assert names(g) == ["s", "a", "b", "c"]
    for bad in ([na, nb, nc], [ns, na, nb, nc, nc], [ns, na, nb, nb], [ns, na, nb, nc, g.make_node(
            "aten.exp.default", (x,), {}, [T])]):
        with pytest.raises(ValueError, match="exactly once"):
            g.reorder(bad)
    assert names(g) == ["s", "a", "b", "c"]
