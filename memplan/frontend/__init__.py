"""Frontends: torch (torch.export / fx) and ONNX, each producing an IR Graph."""
