"""Measurements: fidelity vs PyTorch, latency, fresh-process peak RSS, size breakdown, ARM64 under qemu."""
