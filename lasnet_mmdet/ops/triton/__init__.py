"""Triton backend of the sparse LAS bottleneck (CUDA; CPU tensors under TRITON_INTERPRET=1)."""
from .launcher import triton_forward

__all__ = ['triton_forward']
