"""Sparse execution of a LAS bottleneck on its active patches (inference only)."""


def las_bottleneck_forward(block, x, coarse_mask, backend='auto'):
    """Placeholder until the sparse ops land: the dense-masked computation."""
    raise NotImplementedError('sparse LAS ops are not implemented yet')
