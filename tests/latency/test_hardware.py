import json

import pytest

from lasnet_mmdet.latency.hardware import (PRESETS, HardwareProfile, ProfileError, get_preset,
                                           load_profile, preset_names)


def test_presets_cover_the_paper_devices():
    assert {'v100', 'a100', 'h100', 'rtx3090', 'tx2'} <= set(preset_names())
    for name in PRESETS:
        profile = load_profile(name)
        assert profile.kind == 'gpu' and profile.peak_flops() > 0
    assert get_preset('Jetson_TX2').name == 'tx2'
    assert get_preset('V100').name == 'v100'


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ProfileError, match='unknown hardware preset .*known presets'):
        load_profile('tpu-v9')


def test_missing_and_corrupt_profiles(tmp_path):
    with pytest.raises(ProfileError, match='not found'):
        load_profile(str(tmp_path / 'nope.json'))
    bad = tmp_path / 'bad.json'
    bad.write_text('{"name": "x", "kind": ')
    with pytest.raises(ProfileError, match='corrupt .*not valid JSON'):
        load_profile(str(bad))
    bad.write_text('[1, 2]')
    with pytest.raises(ProfileError, match='JSON object'):
        load_profile(str(bad))
    bad.write_text(json.dumps(dict(name='x', kind='cpu', dram_gbps=10, cores=2,
                                   core_gflops=50, frobnicate=1)))
    with pytest.raises(ProfileError, match='unknown profile keys'):
        load_profile(str(bad))


@pytest.mark.parametrize('field,value', [('sms', 0), ('dram_gbps', -900.0),
                                         ('tensor_tflops', float('nan')), ('clock_ghz', None)])
def test_non_positive_hardware_figures_are_rejected(field, value):
    data = PRESETS['v100'].to_dict()
    data[field] = value
    with pytest.raises(ProfileError, match=f'{field} must be a positive number'):
        load_profile(data)


def test_bad_efficiency_and_kind():
    with pytest.raises(ProfileError, match='efficiency compute'):
        PRESETS['h100'].with_efficiency(compute=0.0)
    with pytest.raises(ProfileError, match='kind'):
        HardwareProfile(name='x', kind='tpu', dram_gbps=1.0)
    with pytest.raises(ProfileError, match='cores must be a positive'):
        HardwareProfile(name='x', kind='cpu', dram_gbps=10.0, core_gflops=10.0)


@pytest.mark.parametrize('field,value,message', [
    ('compute_capability', 'hopper', "compute_capability must be like '9.0'"),
    ('compute_capability', 9.0, "compute_capability must be like '9.0'"),
    ('smem_per_sm_kb', -228, 'smem_per_sm_kb must be a positive number')])
def test_bad_kernel_figures_are_rejected(field, value, message):
    data = PRESETS['h100'].to_dict()
    data[field] = value
    with pytest.raises(ProfileError, match=message):
        load_profile(data)
    data[field] = '' if field == 'compute_capability' else 0  # unknown: allowed
    assert getattr(load_profile(data), field) == data[field]


def test_json_round_trip(tmp_path):
    profile = PRESETS['a100'].with_efficiency(compute=0.42)
    path = tmp_path / 'a100.json'
    profile.save(path)
    assert load_profile(str(path)) == profile


def test_bundled_calibrated_profiles_load():
    import glob
    import os.path as osp

    from lasnet_mmdet.latency.hardware import PROFILE_DIR
    paths = glob.glob(osp.join(PROFILE_DIR, '*.json'))
    assert paths
    for path in paths:
        name = osp.splitext(osp.basename(path))[0]
        assert load_profile(name) == load_profile(path)
