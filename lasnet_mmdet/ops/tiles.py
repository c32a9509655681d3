"""Tiles of the Triton row kernels (``ops.triton.gemm``, ``ops.triton.conv1_masker``), as data.

Per GPU architecture a table, measured once with ``tools/benchmark_kernels.py --tune``, gives
each (kernel, N, K) its tile: block sizes, warps, pipeline stages and, for the 3x3 conv, a split
of the K loop. Plain data and lookups (no Triton, no CUDA): the kernels' launchers pick their
tiles here, and the latency predictor (``lasnet_mmdet.latency``) models the programs those
tiles launch.
"""
import functools
import json
from typing import NamedTuple


class Tile(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    # conv3x3 only: its K loop (9 taps x channel blocks) split over this many programs per
    # output tile, for the few-row layers whose tiles alone do not fill the GPU.
    split_k: int = 1


class Tiles(NamedTuple):
    """A tile for lists of at most ``split_rows`` rows and one for longer lists."""
    few_rows: Tile
    many_rows: Tile
    split_rows: int

    def pick(self, max_rows):
        return self.few_rows if max_rows <= self.split_rows else self.many_rows


# Hopper (sm_90), measured on an H100 SXM (torch 2.11, Triton 3.6) with
#   python tools/benchmark_kernels.py --tune --batch 1 8 --rep 10 [--dtype fp32] --json FILE
# (every ResNet-101 layer at 800x1216, rows of a random r = 0.5 mask at S = 4-4-2-1, each
# candidate tile's median time in CUDA-graph replays). Per (kernel, N, K), with conv3x3's
# K = 9 x C_in: the tile with the smallest geometric mean of time / best time over the layers
# of that key, at batch 1 (few rows) and at batch 8 (many rows); where they differ, ``Tiles``
# switches at the geometric mean of the two runs' largest row counts. A few rows want small
# tiles that fill the 132 SMs (stage 3's conv2 at batch 1: 30 programs of 128 x 256 take 35
# us, 120 of 128 x 64 take 17); many rows want large tiles that read the weights fewer times
# (at batch 8: 35 us vs 55). Runs: docs/sparse_ops_results/h100_tune_fp16.json. Summed over
# the backbone's kernels, fp16: 1.04 ms at batch 1 and 4.42 ms at batch 8, where one tile per
# key took 1.10 and 5.33 ms. fp32 (TF32) was retuned when its weights became N x K
# (``fold_bn.weight_layout``: Hopper's TF32 MMA reads B K-contiguous only, so K x N weights
# were copied to shared memory 4 bytes at a time), on an H200 (same SM count): at the previous
# table's tiles that layout alone took the sparse kernels from 3.91 to 2.06 ms at batch 1 and
# from 21.96 to 12.39 ms at batch 8 (docs/sparse_ops_results/h200_s5_run1_kernels_fp32_*.json).
# The fp16 conv1 keys ('gemm', mid, 4 x mid or the stage input) were retuned for the launch
# with the masker (``conv1_masker``, M tiles of whole cells; ``--convs conv1 --tune``, ninth
# session, h100_s9_run2_tune_conv1_fp16.json): backbone 1.72 -> 1.69 ms at batch 1, 6.54 ->
# 6.50 at batch 8 (two interleaved pairs each). The unfused conv1 (S = 7) shares them.
# The few-row conv2 tiles of stages 3-4 split their K loop (``split_k``; ``--convs conv2
# --stages 3 4 --tune --batch 1``, h100_s9_run3_tune_conv2_b1_split.json): stage 3 17.7 ->
# 16.3 us, stage 4 26.0 -> 19.9 us; backbone at batch 1 1.70 / 1.66 -> 1.64 / 1.62 ms.
HOPPER_16BIT = {
    ('conv3x3', 64, 576): Tile(128, 64, 64, 4, 4),
    ('conv3x3', 128, 1152): Tiles(Tile(64, 128, 64, 4, 3), Tile(128, 128, 64, 4, 3), 42992),
    ('conv3x3', 256, 2304): Tiles(Tile(64, 64, 64, 4, 4, 3), Tile(128, 256, 64, 8, 3), 10748),
    ('conv3x3', 512, 4608): Tiles(Tile(64, 128, 64, 4, 3, 2), Tile(64, 256, 64, 8, 3), 2687),
    ('gemm', 64, 64): Tile(128, 64, 32, 4, 4),
    ('gemm', 64, 256): Tile(128, 64, 32, 4, 4),
    ('gemm', 128, 256): Tile(128, 64, 32, 4, 4),
    ('gemm', 128, 512): Tile(128, 128, 64, 4, 3),
    ('gemm', 256, 64): Tile(64, 128, 32, 4, 4),
    ('gemm', 256, 512): Tiles(Tile(64, 128, 64, 4, 3), Tile(64, 128, 32, 4, 4), 42992),
    ('gemm', 256, 1024): Tiles(Tile(64, 64, 64, 4, 4), Tile(128, 128, 64, 8, 3), 10748),
    ('gemm', 512, 128): Tiles(Tile(128, 128, 64, 4, 3), Tile(64, 128, 64, 4, 3), 42992),
    ('gemm', 512, 1024): Tiles(Tile(64, 128, 64, 4, 3), Tile(128, 256, 64, 8, 3), 10748),
    ('gemm', 512, 2048): Tiles(Tile(64, 64, 64, 4, 3), Tile(64, 128, 64, 4, 3), 2687),
    ('gemm', 1024, 256): Tiles(Tile(128, 128, 64, 8, 3), Tile(128, 128, 64, 4, 3), 10748),
    ('gemm', 2048, 512): Tiles(Tile(64, 128, 64, 4, 3), Tile(128, 128, 64, 4, 3), 2687),
}
HOPPER_32BIT = {  # measured on an H200 (sm_90, 132 SMs), weights N x K (see the comment above)
    ('conv3x3', 64, 576): Tile(128, 64, 32, 4, 4),
    ('conv3x3', 128, 1152): Tiles(Tile(64, 128, 64, 4, 3), Tile(128, 128, 32, 8, 3), 42992),
    ('conv3x3', 256, 2304): Tiles(Tile(64, 64, 64, 4, 4), Tile(128, 128, 32, 8, 3), 10748),
    ('conv3x3', 512, 4608): Tiles(Tile(64, 64, 64, 4, 3), Tile(128, 128, 64, 8, 3), 2687),
    ('gemm', 64, 64): Tile(128, 64, 32, 4, 4),
    ('gemm', 64, 256): Tile(128, 64, 32, 4, 4),
    ('gemm', 128, 256): Tile(64, 128, 32, 4, 4),
    ('gemm', 128, 512): Tiles(Tile(128, 128, 32, 8, 3), Tile(64, 128, 32, 4, 4), 42992),
    ('gemm', 256, 64): Tiles(Tile(128, 64, 32, 4, 4), Tile(64, 128, 32, 4, 4), 171968),
    ('gemm', 256, 512): Tile(64, 128, 32, 4, 4),
    ('gemm', 256, 1024): Tile(64, 128, 32, 4, 4),
    ('gemm', 512, 128): Tile(64, 128, 32, 4, 4),
    ('gemm', 512, 1024): Tiles(Tile(128, 128, 32, 8, 3), Tile(64, 128, 32, 4, 4), 10748),
    ('gemm', 512, 2048): Tiles(Tile(64, 64, 64, 4, 3), Tile(128, 128, 64, 8, 3), 2687),
    ('gemm', 1024, 256): Tiles(Tile(64, 128, 32, 4, 4), Tile(128, 64, 32, 4, 4), 10748),
    ('gemm', 2048, 512): Tiles(Tile(128, 128, 32, 8, 3), Tile(64, 128, 32, 4, 4), 2687),
}

# Used where the table has no entry (other GPUs, other channel counts), by N.
DEFAULT_16BIT = {  # N <= 64, N <= 128, larger
    'gemm': (Tile(64, 64, 64, 4, 4), Tile(64, 128, 64, 4, 3), Tile(128, 128, 64, 8, 3)),
    'conv3x3': (Tile(64, 64, 64, 4, 4), Tile(64, 128, 64, 4, 3), Tile(128, 128, 64, 8, 3)),
}
# fp32 (TF32 or IEEE products): twice the bytes per element, so half the K per stage.
DEFAULT_32BIT = (Tile(64, 64, 32, 4, 3), Tile(64, 128, 32, 4, 3), Tile(128, 128, 32, 8, 3))


@functools.lru_cache(maxsize=None)
def tiles_from_file(path):
    """``(fp32, {(kernel, N, K): Tile | Tiles})`` from a ``--tune`` JSON: whether it was tuned
    in fp32, and its ``table``."""
    with open(path) as f:
        data = json.load(f)
    table = {}
    for r in data['table']:
        key = (r['kernel'], int(r['N']), int(r['K']))
        if 'tile' in r:
            table[key] = Tile(*r['tile'])
        else:
            table[key] = Tiles(Tile(*r['few_rows']), Tile(*r['many_rows']), int(r['split_rows']))
    return data.get('dtype') == 'fp32', table


def table_tile(kernel, n, k, fp32, capability_major, max_rows, tiles_file=None):
    """The ``Tile`` of ``kernel`` ('gemm' or 'conv3x3') for an N x K weight, in fp32 or a
    16-bit dtype, on a GPU of compute capability ``capability_major`` (None: not a GPU), for a
    row list of at most ``max_rows`` rows: from ``tiles_file`` (a ``--tune`` JSON of the same
    precision) if it has the key, else from this architecture's table (sm_90), else a default
    by N."""
    tile = None
    if tiles_file and tiles_from_file(tiles_file)[0] == fp32:
        tile = tiles_from_file(tiles_file)[1].get((kernel, n, k))
    if tile is None and capability_major == 9:
        tile = (HOPPER_32BIT if fp32 else HOPPER_16BIT).get((kernel, n, k))
    if isinstance(tile, Tiles):
        return tile.pick(max_rows)
    if tile is not None:
        return tile
    size = 0 if n <= 64 else 1 if n <= 128 else 2
    return DEFAULT_32BIT[size] if fp32 else DEFAULT_16BIT[kernel][size]
