"""A test hook for the distributed tests (imported through ``custom_imports``).

It makes the masks a deterministic function of each image (huge logits, so the Gumbel noise
cannot flip a decision, and BN in eval mode, so an image's features do not depend on the
batch it is in), then records what the first training iteration logged.
"""
import json

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmdet.registry import HOOKS


@HOOKS.register_module()
class LASProbeHook(Hook):

    def __init__(self, out_file, masks='by_content'):
        self.out_file = out_file
        self.masks = masks

    def before_train(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        for _, block in model.backbone.las_blocks():
            conv = block.masker.conv2
            with torch.no_grad():
                conv.weight.zero_()
                conv.bias.zero_()
                if self.masks == 'by_content':  # execute where channel 0 >= channel 1 - 1e-3
                    conv.weight[0, 0] = 1e6
                    conv.weight[0, 1] = -1e6
                    conv.bias[0] = 1e3  # ReLU zeros in both channels: a decisive execute
                else:  # 'none': no patch executes anywhere
                    conv.bias[1] = 1e6

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter == 0 and dist.get_rank() == 0:
            record = {key: float(outputs[key])
                      for key in ('loss_latency', 'las_act_rate', 'las_cost_ratio')}
            record['world_size'] = dist.get_world_size()
            with open(self.out_file, 'w') as f:
                json.dump(record, f)
