"""Import a module of ``benchmarks/`` by path (benchmarks/ is not a package), for the tests that
check what the benchmarks measure."""
import importlib.util
from pathlib import Path


def load(name: str):
    """``benchmarks/<name>.py`` as a module named ``memplan_benchmarks_<name>``."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"memplan_benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
