"""A LAS bottleneck on the active patches with the Triton kernels, no host synchronisation.

Given a coarse mask (``triton_forward``):

    compact_rows        coarse mask -> needed conv1 rows, active output rows (+ counts, zeroed
                        once per forward for every block: ``ops.counters``)
    rows_gemm (conv1)   gather needed input rows, GEMM, BN bias, ReLU -> conv1 map rows

With the block's masker (``triton_forward_with_masker``), those two and the masker are one
launch, which reads the input once for all three:

    conv1_masker        conv1 on every pixel -> conv1 map; the masker's decision -> coarse
                        mask and the output row list (``conv1_masker``)

Then, either way:

    conv3x3_rows        gather the 9 taps of active rows from the conv1 map -> compact rows
    rows_gemm (conv3)   compact rows GEMM + bias + residual, ReLU -> scattered output rows;
                        the same launch writes ReLU(residual) at the inactive rows (or, for
                        an identity block allowed to, the output is x updated in place). The
                        residual: x, or the downsample 1x1 conv, computed in this launch
                        (its K loop over x's strided pixels added to conv3's products, its
                        folded BN's bias in the epilogue) where ``triton_fuses_downsample``
                        says so, else cuDNN's conv before it (its bias added here)
"""
import torch
import torch.nn.functional as F

from .. import triton_fuses_downsample
from ..counters import zeroed_counters
from ..geometry import coarse_shape, conv_out
from .compact import compact_rows
from .conv1_masker import conv1_masker
from .gemm import Downsample, conv3x3_rows, rows_gemm


def triton_forward(x, coarse, weights, granularity, stride, ieee=False, in_place=False):
    """Eval output of a LAS bottleneck (``weights``: ``FoldedBottleneck``) on its active
    patches. ``ieee``: fp32 products in full precision (else TF32 on tensor cores, as cuDNN's
    dense convs under ``torch.backends.cudnn.allow_tf32``). ``in_place``: an identity block
    writes its output into ``x``, at the active rows only; only for an ``x`` that is >= 0
    (ReLU(x) = x where no patch runs: a previous block's output) and held by no one else."""
    batch, _, in_h, in_w = x.shape
    out_h, out_w = conv_out(in_h, stride), conv_out(in_w, stride)
    f = weights
    # The kernels take K x N weights of any strides: an 'nk' weight goes in as its transpose.
    w1, w2, w3 = (w if f.layout == 'kn' else w.t() for w in (f.w1, f.w2, f.w3))
    mid_c = w1.shape[1]
    x = x.contiguous(memory_format=torch.channels_last)
    in_rows, out_rows = batch * in_h * in_w, batch * out_h * out_w

    counts = zeroed_counters(3, x.device)  # needed, active, inactive rows
    needed = torch.empty(in_rows, dtype=torch.int32, device=x.device)
    active = torch.empty(out_rows, dtype=torch.int32, device=x.device)
    compact_rows(coarse.contiguous(), counts, needed, active, (in_h, in_w), (out_h, out_w),
                 granularity, stride)

    mid = x.new_empty(in_rows, mid_c)  # rows outside the needed list are never read
    rows_gemm(x, w1, f.b1, mid, needed, counts[0:], in_rows, gather_a=True,
              scatter_out=True, ieee=ieee)
    return _conv2_conv3(x, mid, active, counts[1:], f, w2, w3, stride, ieee, in_place)


def triton_forward_with_masker(x, masker_columns, masker_bias, weights, granularity, stride,
                               ieee=False, in_place=False, pin=None, decide=True):
    """``(output, coarse mask)`` of a LAS bottleneck whose masker (``masker_columns``: its
    weight as ``conv1_masker.masker_columns`` in x's dtype, ``masker_bias``) decides in the
    conv1 launch; ``pin``/``decide`` as ``conv1_masker``; the rest as ``triton_forward``."""
    batch, _, in_h, in_w = x.shape
    out_h, out_w = conv_out(in_h, stride), conv_out(in_w, stride)
    f = weights
    w1, w2, w3 = (w if f.layout == 'kn' else w.t() for w in (f.w1, f.w2, f.w3))
    x = x.contiguous(memory_format=torch.channels_last)
    counts = zeroed_counters(3, x.device)  # (unused), active, inactive rows
    active = torch.empty(batch * out_h * out_w, dtype=torch.int32, device=x.device)
    coarse = x.new_empty(coarse_shape(batch, in_h, in_w, stride, granularity))
    mid = x.new_empty(batch * in_h * in_w, w1.shape[1])
    conv1_masker(x, w1, f.b1, mid, masker_columns, masker_bias, coarse, active, counts[1:],
                 stride * granularity, granularity, (out_h, out_w), pin=pin, decide=decide,
                 ieee=ieee)
    return _conv2_conv3(x, mid, active, counts[1:], f, w2, w3, stride, ieee, in_place), coarse


def _conv2_conv3(x, mid, active, count, f, w2, w3, stride, ieee, in_place):
    """conv2 on the active rows of the conv1 map ``mid``, conv3 + residual + ReLU into the
    block output (``active``: every output row, the first ``count[0]`` active)."""
    batch, _, in_h, in_w = x.shape
    out_h, out_w = conv_out(in_h, stride), conv_out(in_w, stride)
    out_rows = batch * out_h * out_w
    y2 = x.new_empty(out_rows, mid.shape[1])
    conv3x3_rows(mid, w2, f.b2, y2, active, count, out_rows, (in_h, in_w), (out_h, out_w),
                 stride, ieee=ieee)
    if f.ds_weight is None and in_place:
        # Each active row reads its residual and writes its output at the same place; the
        # other rows already hold ReLU(x) = x: half the block output's traffic at r = 0.5.
        rows_gemm(y2, w3, f.b3, x, active, count, out_rows, gather_a=False,
                  scatter_out=True, res=x, ieee=ieee)
        return x
    ds_out, ds_in = (0, 0) if f.ds_weight is None else f.ds_weight.shape[:2]
    if f.ds_weight is not None and triton_fuses_downsample(out_rows, ds_in, ds_out):
        # The downsample conv in conv3's launch: its (K x N view of the N x K) weight's K
        # loop adds into conv3's products, its output never written.
        out = torch.empty((batch, ds_out, out_h, out_w), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        ds = Downsample(x, f.ds_weight.reshape(ds_out, ds_in).t(), f.ds_stride)
        rows_gemm(y2, w3, f.b3, out, active, count, out_rows, gather_a=False,
                  scatter_out=True, res_bias=f.ds_bias, relu_rest=True, ieee=ieee,
                  downsample=ds)
        return out
    if f.ds_weight is None:
        res = x
    else:  # cuDNN's conv, no bias: its folded BN's is added in conv3's epilogue
        res = F.conv2d(x, f.ds_weight, None, f.ds_stride).contiguous(
            memory_format=torch.channels_last)
    out = torch.empty_like(res, memory_format=torch.channels_last)
    rows_gemm(y2, w3, f.b3, out, active, count, out_rows, gather_a=False,
              scatter_out=True, res=res, res_bias=f.ds_bias, relu_rest=True, ieee=ieee)
    return out
