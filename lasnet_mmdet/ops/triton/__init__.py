"""Triton backend of the sparse LAS bottleneck (CUDA; CPU tensors under TRITON_INTERPRET=1)."""
from .launcher import triton_forward
from .masker import masker_decision

__all__ = ['masker_decision', 'triton_forward']
