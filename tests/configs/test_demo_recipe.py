"""The demo's from-dense recipe moves the cost ratio toward the target faster than the paper's
COCO settings (execute bias 5, constant tau 0.1, no bounds, no masker lr multiplier): same
seed, same data, same iterations, the real Runner."""
import os.path as osp

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

import lasnet_mmdet  # noqa: F401
from conftest import REPO, resize_options, sample_data_options

DEMO = 'configs/demo/mask-rcnn_las-r50-4421_fpn_sample.py'
PAPER = {
    'model.backbone.masker_cfg': dict(execute_bias=5.0, skip_bias=0.0),
    'optim_wrapper.paramwise_cfg': dict(_delete_=True),
    'custom_hooks': [dict(type='LatencyLossHook', target=0.5, weight=1.0, tau=0.1)],
}
ITERATIONS = 8  # 1 epoch of 8 images, batch 1 (half the compute of batch 2)


class RatioRecorder(Hook):

    def __init__(self):
        self.ratios = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.ratios.append(float(outputs['las_cost_ratio']))


def train(sample_coco, tmp_path, name, **overrides):
    cfg = Config.fromfile(osp.join(REPO, DEMO))
    cfg.merge_from_dict(sample_data_options(sample_coco))
    cfg.merge_from_dict(resize_options(cfg))
    cfg.merge_from_dict({'train_cfg.max_epochs': 1,
                         'train_dataloader.batch_size': 1,
                         'train_cfg.val_interval': 100,
                         'default_hooks.checkpoint.interval': 100,
                         # full lr from the first step (no warm-up): a few iterations suffice
                         'param_scheduler': None,
                         'randomness': dict(seed=0)})
    cfg.merge_from_dict(overrides)
    cfg.work_dir = str(tmp_path / name)
    cfg.experiment_name = f'{tmp_path.name}_{name}'
    runner = Runner.from_cfg(cfg)
    recorder = RatioRecorder()
    runner.register_hook(recorder, priority='LOWEST')
    runner.train()
    assert len(recorder.ratios) == ITERATIONS
    return recorder.ratios


def test_recipe_moves_the_cost_toward_the_target_faster(sample_coco, tmp_path):
    paper = train(sample_coco, tmp_path, 'paper', **PAPER)
    recipe = train(sample_coco, tmp_path, 'recipe')
    target = 0.5
    late = slice(ITERATIONS - 2, None)
    paper_gap = sum(r - target for r in paper[late]) / 2
    recipe_gap = sum(r - target for r in recipe[late]) / 2
    # The paper's settings barely move all-on masks (execute bias 5 at tau 0.1 saturates the
    # straight-through gradient); the recipe closes most of the gap within a few iterations
    # (measured: 0.99 -> 1.00 vs 0.91 -> 0.74). A recipe that only starts lower and does not
    # learn (0.9 throughout) fails the last two checks, as do the paper's settings.
    assert paper_gap > 0.4, paper
    assert recipe_gap < paper_gap - 0.15, (recipe, paper)
    # ... by learning, not only by its lower starting bias: it keeps moving down.
    assert sum(recipe[late]) / 2 < recipe[0] - 0.1, recipe
