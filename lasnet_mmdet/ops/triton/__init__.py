"""Triton backend of the sparse LAS bottleneck (CUDA; CPU tensors under TRITON_INTERPRET=1)."""
from .conv1_masker import masker_columns
from .launcher import triton_forward, triton_forward_with_masker
from .masker import masker_decision

__all__ = ['masker_columns', 'masker_decision', 'triton_forward', 'triton_forward_with_masker']
