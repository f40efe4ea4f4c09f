"""Pass ``canonicalize``: dead-code elimination.

Removes nodes none of whose outputs reach a graph output (all registered
ops are pure) and params no node reads, so no buffer is planned for work
whose result nobody uses.
"""
from memplan.ir.graph import Graph
from memplan.passes.manager import register_pass


@register_pass("canonicalize", kind="graph")
def canonicalize(graph: Graph, ctx) -> Graph:
    """Drop nodes whose outputs are never used and params never read."""
    needed = {v.name for v in graph.outputs}
    kept = []
    for node in reversed(graph.nodes):
        if any(v.name in needed for v in node.outputs):
            kept.append(node)
            needed.update(v.name for v in node.inputs)
    removed = len(graph.nodes) - len(kept)
    graph.nodes = kept[::-1]
    unused = [p for p in graph.params if p.name not in needed]
    graph.params = [p for p in graph.params if p.name in needed]
    for p in unused:
        graph.weights.pop(p.name, None)
    if removed or unused:
        ctx.log.append(f"canonicalize: removed {removed} dead nodes and {len(unused)} unused params")
    return graph
