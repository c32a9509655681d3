"""PyTorch backend (CPU, and a reference on CUDA): a LAS bottleneck as GEMMs on pixel rows.

The block input is viewed channels-last as a ``(B*H*W, C_in)`` row matrix (no copy when it
already is channels-last, which every block's output here is), and each conv is one GEMM with
BN folded in (``fold_bn``):

1. conv1 (1x1): on the needed rows only (the dilated mask; each halo row computed once), written
   into a ``(B*H*W + 1, C_mid)`` buffer whose last row stays zero; when nearly every row is
   needed (fine S), one dense GEMM straight into the buffer is cheaper than gather + scatter.
2. conv2 (3x3, stride s): the nine taps of every active output pixel gathered (im2col on the
   active pixels only; taps outside the image read the zero row) and one GEMM.
3. conv3 (1x1) GEMM accumulated onto the gathered residual rows (identity copy or downsample
   output) + ReLU, copied back after one in-place ReLU of the whole output (inactive rows:
   ReLU(residual)).

All row sets come from ``patches``; the host reads their sizes (``nonzero``), which is fine on
the CPU; the Triton backend avoids that on CUDA.
"""
import torch

from .fold_bn import folded_weights
from .patches import conv2_taps, conv_out, pixel_masks

# conv1 runs densely when more than this fraction of its rows is needed: the gather and the
# scatter of the rows then cost more than the GEMM rows they save (measured on 2 CPU cores).
DENSE_CONV1_ABOVE = 0.75


def _rows(t):
    """``(B, C, H, W)`` channels-last tensor as its ``(B*H*W, C)`` row matrix (a view)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def torch_forward(block, x, coarse):
    batch, _, in_h, in_w = x.shape
    stride = block.conv2_stride
    out_h, out_w = conv_out(in_h, stride), conv_out(in_w, stride)
    f = folded_weights(block, x.dtype)
    mid_c, out_c = f['w1'].shape[1], f['w3'].shape[1]

    x = x.contiguous(memory_format=torch.channels_last)
    x_rows = _rows(x)
    if block.downsample is not None:
        out = block.downsample(x).contiguous(memory_format=torch.channels_last)
        out_rows = _rows(out)  # a fresh tensor: updated in place
    else:
        out_rows = x_rows.clone()

    active, needed = pixel_masks(coarse, block.granularity, stride, in_h, in_w)
    active_rows = active.flatten().nonzero().squeeze(1)
    if active_rows.numel():
        mid = x.new_empty(batch * in_h * in_w + 1, mid_c)
        mid[-1].zero_()
        needed_rows = needed.flatten().nonzero().squeeze(1)
        if needed_rows.numel() > DENSE_CONV1_ABOVE * (mid.shape[0] - 1):
            torch.addmm(f['b1'], x_rows, f['w1'], out=mid[:-1]).relu_()
        else:
            y1 = torch.addmm(f['b1'], x_rows.index_select(0, needed_rows), f['w1']).relu_()
            mid.index_copy_(0, needed_rows, y1)
        taps = conv2_taps(active_rows, batch, out_h, out_w, in_h, in_w, stride)
        cols = mid.index_select(0, taps.flatten()).view(-1, 9 * mid_c)
        y2 = torch.addmm(f['b2'], cols, f['w2']).relu_()
        # conv3 accumulates onto the gathered residual rows (GEMM with beta=1), which are
        # copied back after the ReLU of the whole map: no atomic scatter-add.
        y3 = out_rows.index_select(0, active_rows).add_(f['b3']).addmm_(y2, f['w3']).relu_()
        out_rows.relu_().index_copy_(0, active_rows, y3)
    else:
        out_rows.relu_()
    return out_rows.view(batch, out_h, out_w, out_c).permute(0, 3, 1, 2)
