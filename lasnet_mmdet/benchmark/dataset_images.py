"""A detector on real images of its config's test set, fed as ``tools/test.py`` feeds them.

With a trained checkpoint the LAS masks are the learned ones (not pinned) and the heads see
as many detections as in a real test run, which is what decides how much of ``predict()``
the backbone is (``tools/benchmark_latency.py --checkpoint CKPT --test-images N``).
"""
import copy

import torch


def dataset_batches(cfg, num_images, device):
    """The first ``num_images`` images of ``cfg.test_dataloader``'s dataset through its pipeline
    and ``cfg.model.data_preprocessor``: a list of ``(inputs, data_samples)``, one image a
    batch (the test loop's default batch size)."""
    from mmdet.registry import DATASETS, MODELS
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset = DATASETS.build(copy.deepcopy(cfg.test_dataloader.dataset))
    if len(dataset) < num_images:
        raise ValueError(f'the test set has {len(dataset)} images, fewer than the '
                         f'{num_images} asked for')
    preprocessor = MODELS.build(copy.deepcopy(cfg.model.data_preprocessor)).to(device)
    batches = []
    with torch.no_grad():
        for i in range(num_images):
            data = preprocessor(pseudo_collate([dataset[i]]), False)
            batches.append((data['inputs'], data['data_samples']))
    return batches
