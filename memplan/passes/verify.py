"""Pass ``verify``: check the IR invariants (see :func:`memplan.ir.verify.verify`)."""
from memplan.ir.verify import verify as verify_graph
from memplan.passes.registry import register_pass


@register_pass("verify", kind="graph")
def verify(graph, ctx):
    """Verify types, SSA order, op support and shapes; returns the graph unchanged."""
    verify_graph(graph)
    return graph
