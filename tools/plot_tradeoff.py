"""Accuracy against cost of LAS detectors: COCO AP (bbox, and segm where present) against
backbone GMACs, predicted latency and measured latency, one subplot per cost the result
files hold, with the dense model as a reference.

    python tools/plot_tradeoff.py RESULTS.json [RESULTS.json ...] --out FIG.png
        [--dense DENSE_RESULTS.json] [--labels NAME ...] [--title TEXT]

RESULTS are the files of ``tools/test.py --las-results OUT.json`` (or mmengine's own
``{work_dir}/{timestamp}/{timestamp}.json`` of a test run). The dense model's AP is drawn as a
horizontal line; its cost is the LAS runs' dense cost (``las/gmacs_dense``, the predictor's
static latency), and its measured latency where its own file has one (``tools/test.py
--measure-latency`` on the dense detector). Measured latencies are the median per image where
a file has it (robust to other jobs on a shared machine), else the mean.
"""
import argparse
import json
import os
import os.path as osp
import stat
import sys
import tempfile

AP_KEYS = (('coco/bbox_mAP', 'bbox AP'), ('coco/segm_mAP', 'segm AP'))
COST_AXES = (('las/gmacs_dynamic', 'backbone GMACs per image'),
             ('las/pred_latency_ms', 'predicted backbone latency (ms)'),
             ('las/measured_latency_ms', 'measured backbone latency (ms)'))
# Read in preference to the axis' key where a file has it.
PREFERRED = {'las/measured_latency_ms': 'las/measured_latency_median_ms'}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Plot COCO AP against backbone cost')
    parser.add_argument('results', nargs='+', help='tools/test.py --las-results JSON files')
    parser.add_argument('--out', required=True, help='the figure (.png, .pdf or .svg)')
    parser.add_argument('--dense', help='results JSON of the dense (static) model')
    parser.add_argument('--labels', nargs='+', help='one label per results file '
                        '(default: the file names)')
    parser.add_argument('--title', default='LAS detectors: accuracy vs. cost')
    args = parser.parse_args(argv)
    if not args.out.lower().endswith(('.png', '.pdf', '.svg')):
        parser.error(f'--out must be a .png, .pdf or .svg file, got {args.out!r}')
    if args.labels is not None and len(args.labels) != len(args.results):
        parser.error(f'--labels needs one label per results file ({len(args.results)}), '
                     f'got {len(args.labels)}')
    return args


def load_results(path):
    """``(metrics, latency profile name or None)`` of one results file; a ``ValueError``
    naming the file if it has no COCO AP."""
    if not osp.isfile(path):
        raise ValueError(f'no such results file: {path}')
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f'{path} is not JSON ({error})')
    metrics = data.get('metrics', data) if isinstance(data, dict) else {}
    if not any(isinstance(metrics.get(key), (int, float)) for key, _ in AP_KEYS):
        raise ValueError(f'{path} has no COCO AP ({" or ".join(k for k, _ in AP_KEYS)}); '
                         f'write results with tools/test.py --las-results OUT.json')
    return metrics, data.get('latency_profile')


def cost(metrics, key):
    """The x of ``metrics`` on the axis of ``key`` (None where the file has none)."""
    return metrics.get(PREFERRED.get(key), metrics.get(key))


def dense_costs(runs, dense):
    """The dense model's x on each cost axis (None where unknown)."""
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    static_ms = [m['las/pred_latency_ms'] / m['las/pred_latency_ratio'] for m in runs
                 if m.get('las/pred_latency_ratio')]
    dense = dense or {}
    return {'las/gmacs_dynamic': mean([m.get('las/gmacs_dense') for m in runs]),
            'las/pred_latency_ms': mean(static_ms) or dense.get('las/pred_latency_ms'),
            'las/measured_latency_ms': cost(dense, 'las/measured_latency_ms')}


def plot(runs, labels, out, dense=None, title='', profile=None):
    """Write the figure of ``runs`` (metrics dicts) to ``out`` and return it; ``profile``
    names the hardware profile of the predicted latencies."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    axes_keys = [(key, name) for key, name in COST_AXES
                 if any(cost(m, key) is not None for m in runs)]
    if not axes_keys:
        raise ValueError('no results file has a backbone cost (las/gmacs_dynamic ...): were '
                         'they written by tools/test.py on a LAS detector?')
    ap_keys = [(key, name) for key, name in AP_KEYS if any(key in m for m in runs)]
    reference = dense_costs(runs, dense)
    fig = Figure(figsize=(4.2 * len(axes_keys), 3.6), dpi=120)
    colors = {'coco/bbox_mAP': 'tab:blue', 'coco/segm_mAP': 'tab:orange'}
    for i, (x_key, x_name) in enumerate(axes_keys):
        ax = fig.add_subplot(1, len(axes_keys), i + 1)
        for ap_key, ap_name in ap_keys:
            points = sorted((cost(m, x_key), m[ap_key], label)
                            for m, label in zip(runs, labels)
                            if cost(m, x_key) is not None and ap_key in m)
            if not points:
                continue
            xs, ys, names = zip(*points)
            ax.plot(xs, ys, 'o-', color=colors[ap_key], label=f'LAS {ap_name}')
            if ap_key == ap_keys[0][0]:  # one label per run, alternately above and below
                for j, (x, y, name) in enumerate(points):
                    ax.annotate(name, (x, y), textcoords='offset points',
                                xytext=(4, 4 if j % 2 == 0 else -11), fontsize=7)
            if dense is not None and ap_key in dense:
                ax.axhline(dense[ap_key], color=colors[ap_key], linestyle='--', linewidth=1,
                           label=f'dense {ap_name}')
                if reference[x_key] is not None:
                    ax.plot([reference[x_key]], [dense[ap_key]], 's', color=colors[ap_key],
                            markerfacecolor='white')
        if reference[x_key] is not None:
            ax.axvline(reference[x_key], color='gray', linestyle=':', linewidth=1,
                       label='dense backbone cost')
        if x_key == 'las/pred_latency_ms' and profile:
            x_name = f'predicted backbone latency on {profile} (ms)'
        if x_key in PREFERRED and all(PREFERRED[x_key] in m for m in runs):
            x_name = x_name.replace(' (ms)', ', median per image (ms)')
        ax.set_xlabel(x_name)
        ax.set_ylabel('COCO AP')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='best')
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    # Whole or not at all: a temporary file beside ``out``, renamed into place. (The tool
    # needs matplotlib only, not torch or mmdet.)
    folder = osp.dirname(osp.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(out)}.', suffix=osp.splitext(out)[1],
                               dir=folder)
    os.close(fd)
    try:
        FigureCanvasAgg(fig).print_figure(tmp, dpi=120)
        os.chmod(tmp, file_mode(out))
        os.replace(tmp, out)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return fig


def file_mode(path):
    """The permissions of the file ``path`` replaces, else those a new file gets (mkstemp
    leaves 0o600), as lasnet_mmdet.visualization.atomic_write does it."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def main(argv=None):
    args = parse_args(argv)
    try:
        runs, profiles = zip(*(load_results(path) for path in args.results))
        dense = load_results(args.dense)[0] if args.dense else None
        labels = args.labels or [osp.splitext(osp.basename(p))[0] for p in args.results]
        profiles = set(p for p in profiles if p)
        plot(runs, labels, args.out, dense, args.title,
             profile=profiles.pop() if len(profiles) == 1 else None)
    except ValueError as error:
        sys.exit(f'plot_tradeoff.py: error: {error}')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
