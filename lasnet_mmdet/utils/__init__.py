from .convert import convert_checkpoint, convert_state_dict, extract_state_dict, load_source
from .setup_env import (load_local_checkpoint, safe_checkpoint_globals, setup_checkpoint_loading,
                        setup_cpu_distributed, setup_env, teardown_env)

__all__ = ['convert_checkpoint', 'convert_state_dict', 'extract_state_dict', 'load_source',
           'load_local_checkpoint', 'safe_checkpoint_globals', 'setup_checkpoint_loading', 'setup_cpu_distributed',
           'setup_env', 'teardown_env']
