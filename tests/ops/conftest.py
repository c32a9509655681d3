import pytest
import torch


@pytest.fixture
def no_tf32():
    """fp32 references must be fp32: cuDNN convs and matmuls default to TF32 on Ampere and
    later (the sparse kernels follow ``torch.backends.cudnn.allow_tf32`` too)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
