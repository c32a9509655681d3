"""PyTorch backend (CPU, and a reference on CUDA): a LAS bottleneck as GEMMs on pixel rows.

The block input is viewed channels-last as a ``(B*H*W, C_in)`` row matrix (no copy when it
already is channels-last, which every block's output here is), and each conv is one GEMM with
BN folded in (``fold_bn``, weights N x K). On the CPU a GEMM of many rows runs as a oneDNN 1x1
convolution over the row matrix viewed as a channels-last ``(1, K, rows, 1)`` image: for the
narrow GEMMs of a ResNet (N = 64 ... 256) oneDNN is 1.4-1.9x faster than the BLAS ``addmm``
(measured on 2 cores); below ``ONEDNN_MIN_ROWS`` rows its per-call weight reorder costs more
than it saves, and ``addmm`` runs:

1. conv1 (1x1): on the needed rows only (the dilated mask; each halo row computed once), written
   into a ``(B, H+2, W+2, C_mid)`` map whose one-pixel border stays zero; when nearly every row
   is needed (fine S), one dense GEMM copied into the map is cheaper than gather + scatter.
2. conv2 (3x3, stride s): the nine taps of every active output pixel gathered (im2col on the
   active pixels only; taps outside the image read the border) and one GEMM.
3. conv3 (1x1) GEMM accumulated onto the gathered residual rows + ReLU, copied into the output,
   which is ReLU(residual) everywhere else (the downsample, when there is one, is the folded
   strided 1x1 conv, whose output becomes the block's output, made ReLU in place; an identity
   block whose input is the previous block's workspace output writes into that input, which is
   already >= 0).

When nearly every output pixel is active (``DENSE_BLOCK_ABOVE``), the block runs its convs
densely instead and keeps conv3's output on the active pixels only.

Gathered rows and the conv1 map come from the current ``Workspace`` (no fresh pages per
block); GEMM results are fresh tensors (oneDNN writes no ``out=``). All row sets come from
``patches``; the host reads their sizes (``nonzero``), which is fine on the CPU; the Triton
backend avoids that on CUDA.
"""
import torch
import torch.nn.functional as F

from .geometry import conv_out
from .patches import conv2_taps, padded_rows, pixel_masks
from .workspace import block_output, is_block_output, scratch

# conv1 runs densely when more than this fraction of its rows is needed: the gather and the
# scatter of the rows then cost more than the GEMM rows they save (measured on 2 CPU cores).
# (0.7 made stage 1 and 2 dense at S = 4, r = 0.5, 73 % needed: 2-3 ms faster per conv1 alone,
# but the R101 4-4-2-1 backbone ran 2-4 % slower, 1300 vs 1276 ms min of 10 interleaved runs.)
# The latency predictor reads it.
DENSE_CONV1_ABOVE = 0.75
# Launches that turn the coarse mask into row lists here (upsample, dilate, nonzero, the conv1
# map's border, padded rows, taps...), counted in ``pixel_masks``, ``padded_rows``,
# ``conv2_taps`` and below (torch.profiler's top-level ops of one block, less its GEMMs,
# gathers and scatters); the latency predictor reads it.
INDEX_OPS = 36
# Above this fraction of active output pixels the block runs its three convs densely (oneDNN,
# channels-last, as the deployed dense network does) and keeps the conv3 output on the active
# pixels only: the gathers, scatters and row lists then cost more than the skipped pixels save
# (R101 4-4-2-1 at 800x1216 on 2 cores, random masks: the sparse path breaks even with the
# dense network near r = 0.65 and was 1.2x it at r = 0.9; between 0.65 and 0.8 the two paths
# measured alike). The latency predictor reads it.
DENSE_BLOCK_ABOVE = 0.8
# GEMMs of at least this many rows run as oneDNN 1x1 convolutions on the CPU (see above): at
# 1820 x 2304 x 256 oneDNN was 10 % faster, at 491 x 4608 x 512 even, at 120 rows 13 % slower.
ONEDNN_MIN_ROWS = 1024


def _rows(t):
    """``(B, C, H, W)`` channels-last tensor as its ``(B*H*W, C)`` row matrix (a view)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def gemm(rows, weight, bias):
    """``rows (M, K) @ weight (N, K).T + bias`` as a fresh ``(M, N)`` matrix."""
    if rows.device.type == 'cpu' and rows.shape[0] >= ONEDNN_MIN_ROWS:
        m, k = rows.shape
        image = rows.view(1, m, 1, k).permute(0, 3, 1, 2)  # (1, K, M, 1), channels-last
        out = F.conv2d(image, weight.view(*weight.shape, 1, 1), bias)
        return out.permute(0, 2, 3, 1).reshape(m, -1)  # channels-last output: a view
    return torch.addmm(bias, rows, weight.t())


def _dense_block(x, active, weights, stride):
    """The block on every pixel (folded convs, channels-last), conv3's output kept where
    ``active`` (``(B, H_o, W_o)`` bool) only: ReLU(residual + mask * conv3), NaN-safe."""
    f = weights
    mid_c, out_c = f.w1.shape[0], f.w3.shape[0]
    y1 = F.conv2d(x, f.w1.view(mid_c, -1, 1, 1), f.b1).relu_()
    # N x (3, 3, C_in) is a channels-last 3x3 conv weight: a view, no copy
    w2 = f.w2.view(mid_c, 3, 3, mid_c).permute(0, 3, 1, 2)
    y2 = F.conv2d(y1, w2, f.b2, stride=stride, padding=1).relu_()
    y3 = F.conv2d(y2, f.w3.view(out_c, mid_c, 1, 1), f.b3)
    y3.masked_fill_(~active[:, None], 0)  # fill, not multiply: skipped NaN/Inf do not leak
    if f.ds_weight is None:
        residual = x
    else:
        residual = F.conv2d(x, f.ds_weight, f.ds_bias, stride=f.ds_stride)
    return y3.add_(residual).relu_()


def torch_forward(x, coarse, weights, granularity, stride, reuse_output=False):
    """Eval output of a LAS bottleneck (``weights``: ``FoldedBottleneck``) on its active patches.

    ``reuse_output``: the output may live in the current workspace (and an identity block whose
    input is the previous block's workspace output may update it in place); only a caller that
    knows nobody else holds these tensors may ask for it.
    """
    batch, in_c, in_h, in_w = x.shape
    out_h, out_w = conv_out(in_h, stride), conv_out(in_w, stride)
    f = weights
    mid_c, out_c = f.w1.shape[0], f.w3.shape[0]

    def buffer(name, *shape):
        return scratch(name, shape, x.dtype, x.device)

    def new_output():
        shape = (batch, out_c, out_h, out_w)
        if reuse_output:
            return block_output(shape, x.dtype, x.device)
        return torch.empty(shape, dtype=x.dtype, device=x.device,
                           memory_format=torch.channels_last)

    x = x.contiguous(memory_format=torch.channels_last)
    x_rows = _rows(x)
    active, needed = pixel_masks(coarse, granularity, stride, in_h, in_w)
    active_rows = active.flatten().nonzero().squeeze(1)
    n = active_rows.numel()
    if n > DENSE_BLOCK_ABOVE * active.numel():
        return _dense_block(x, active, f, stride)

    identity = f.ds_weight is None
    if identity and reuse_output and is_block_output(x):
        # x is the previous block's output: already >= 0 (so ReLU(residual) = x where no patch
        # runs) and read by no one after this block: the output is x, updated in place.
        out, res_rows = x, x_rows
    elif identity:
        out, res_rows = new_output(), x_rows
    else:  # the folded downsample's output is the block's output (channels-last, fresh)
        out = F.conv2d(x, f.ds_weight, f.ds_bias, stride=f.ds_stride)
        res_rows = _rows(out)
    # conv3's accumulator starts as the residual rows, gathered before any ReLU touches them.
    y3 = torch.index_select(res_rows, 0, active_rows, out=buffer('y3', n, out_c))
    if not identity:
        out.relu_()
    elif out is not x:
        torch.clamp_min(x, 0, out=out)
    if n == 0:
        return out

    # conv1's output map with a zero border (conv2's padding): only the border is zeroed, the
    # rows conv2 reads inside are all written.
    mid_map = buffer('mid', batch, in_h + 2, in_w + 2, mid_c)
    for border in (mid_map[:, 0], mid_map[:, -1], mid_map[:, 1:-1, 0], mid_map[:, 1:-1, -1]):
        border.zero_()
    mid = mid_map.view(-1, mid_c)
    needed_rows = needed.flatten().nonzero().squeeze(1)
    m = needed_rows.numel()
    if m > DENSE_CONV1_ABOVE * batch * in_h * in_w:
        y1 = gemm(x_rows, f.w1, f.b1).view(batch, in_h, in_w, mid_c)
        torch.clamp_min(y1, 0, out=mid_map[:, 1:-1, 1:-1])
    else:
        x1 = torch.index_select(x_rows, 0, needed_rows, out=buffer('x1', m, in_c))
        mid.index_copy_(0, padded_rows(needed_rows, in_h, in_w), gemm(x1, f.w1, f.b1).relu_())
    taps = conv2_taps(active_rows, out_h, out_w, in_h, in_w, stride)
    cols = torch.index_select(mid, 0, taps.flatten(), out=buffer('cols', 9 * n, mid_c))
    y2 = gemm(cols.view(n, 9 * mid_c), f.w2, f.b2).relu_()
    y3.add_(gemm(y2, f.w3, f.b3)).relu_()
    _rows(out).index_copy_(0, active_rows, y3)
    return out
