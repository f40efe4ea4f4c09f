"""memplan's IR: types, graph, op registry, printer/parser and verifier."""
from memplan.ir.types import TensorType, Dim, DTYPES, dtype_name, sym
from memplan.ir.graph import Graph, Node, Value, INPUT, PARAM, NODE, iter_values, map_values
from memplan.ir import printer as _printer  # noqa: F401  (gives Graph its text form: str(graph))

__all__ = ["TensorType", "Dim", "DTYPES", "dtype_name", "sym", "Graph", "Node", "Value",
           "INPUT", "PARAM", "NODE", "iter_values", "map_values"]
