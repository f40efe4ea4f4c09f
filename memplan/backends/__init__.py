"""Backends: PyTorch (scheduled aten code) and, for fused groups, Triton."""
