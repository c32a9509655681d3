"""Latency-aware granularity: the patch size S per stage that the predictor finds fastest.

Every block of a stage shares one S (as in LASNet's ``S_net = a-b-c-d``), so the search is
independent per stage: predict the stage at each candidate S and the target rate, keep the
fastest. The static stage and S=1 (pixel-level masks) are reported beside it, because the
paper's point is that S=1 can be slower than the static network on a server GPU; the
backbone totals also against the deployed dense network (the benchmark's reference).
"""
from dataclasses import dataclass, field

from .hardware import load_profile
from .predictor import get_schedule, predict_backbone, resnet_block_shapes

DEFAULT_CANDIDATES = (1, 2, 4, 7, 8)


@dataclass
class SearchResult:
    profile: str
    shape: tuple
    rate: float
    batch: int
    dtype: str
    candidates: tuple
    static_ms: list                  # per stage
    stage_ms: dict                   # S -> per-stage ms
    best: tuple                      # S per stage
    stem_ms: float = 0.0
    totals: dict = field(default_factory=dict)  # 'static', 'S=1', 'best' -> backbone ms

    def config_snippet(self):
        return f'model = dict(backbone=dict(granularity={self.best}))'

    def table(self):
        cands = self.candidates
        lines = [f'granularity search: {self.profile} ({self.dtype}), input {self.shape[0]}x'
                 f'{self.shape[1]}, batch {self.batch}, rate {self.rate:g}',
                 f'{"stage":<7}{"static":>9}' + ''.join(f'{"S=%d" % s:>9}' for s in cands)
                 + f'{"best":>6}{"ratio":>7}']
        for i in range(4):
            row = f'layer{i + 1:<2}{self.static_ms[i]:>9.3f}'
            row += ''.join(f'{self.stage_ms[s][i]:>9.3f}' for s in cands)
            best = self.best[i]
            row += f'{best:>6}{self.stage_ms[best][i] / self.static_ms[i]:>7.2f}'
            lines.append(row)
        lines.append("(ms per stage; ratio = best / static, mmdet's eager ResNet)")
        static, deployed = self.totals['static'], self.totals.get('deployed dense')
        for key, value in self.totals.items():
            ratios = f'{value / static:.2f} x static'
            if deployed:
                ratios += f', {value / deployed:.2f} x deployed dense'
            lines.append(f'backbone {key:<22}{value:>9.3f} ms  ({ratios})')
        return '\n'.join(lines)

    def to_dict(self):
        return dict(profile=self.profile, shape=list(self.shape), rate=self.rate,
                    batch=self.batch, dtype=self.dtype, candidates=list(self.candidates),
                    static_ms=self.static_ms,
                    stage_ms={str(s): v for s, v in self.stage_ms.items()},
                    best=list(self.best), stem_ms=self.stem_ms, totals=self.totals,
                    config=self.config_snippet())


def search_granularity(profile, in_h, in_w, rate=0.5, candidates=DEFAULT_CANDIDATES,
                       depth=101, batch=1, schedule=None, dtype=None):
    """Per-stage S minimising predicted latency at activation rate ``rate``."""
    profile = load_profile(profile)
    dtype = dtype or profile.dtype
    schedule = get_schedule(schedule, profile)
    if not 0 <= rate <= 1:
        raise ValueError(f'rate must be in [0, 1], got {rate!r}')
    if in_h < 1 or in_w < 1:
        raise ValueError(f'input size must be >= 1x1, got {in_h}x{in_w}')
    if batch < 1:
        raise ValueError(f'batch must be >= 1, got {batch!r}')
    candidates = tuple(sorted({int(s) for s in candidates}))
    if not candidates or candidates[0] < 1:
        raise ValueError(f'candidates must be integers >= 1, got {candidates!r}')
    resnet_block_shapes(in_h, in_w, depth, batch)  # validates depth
    kw = dict(depth=depth, batch=batch, schedule=schedule, dtype=dtype)
    ms = lambda stages: [1e3 * t for t in stages]  # noqa: E731
    static = predict_backbone(profile, in_h, in_w, None, **kw)
    stage_ms = {s: ms(predict_backbone(profile, in_h, in_w, s, rate, **kw)['stages'])
                for s in candidates}
    best = tuple(min(candidates, key=lambda s: (stage_ms[s][i], s)) for i in range(4))
    stem = 1e3 * static['stem']
    # The best dense schedule too (BN folded, channels-last; on a GPU the compiled network):
    # the reference of ``cost='latency'`` and of tools/benchmark_latency.py's ratios.
    deployed = predict_backbone(profile, in_h, in_w, None, deployed=True, **kw)
    totals = {'static': 1e3 * static['total'], 'deployed dense': 1e3 * deployed['total']}
    if 1 in candidates:
        totals['S=1 (pixel masks)'] = stem + sum(stage_ms[1])
    totals['best ' + '-'.join(map(str, best))] = stem + sum(
        stage_ms[s][i] for i, s in enumerate(best))
    return SearchResult(profile.name, (in_h, in_w), float(rate), batch, dtype, candidates,
                        ms(static['stages']), stage_ms, best, stem, totals)
