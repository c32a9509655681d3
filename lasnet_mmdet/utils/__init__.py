from .checkpoint import load_local_checkpoint, register_checkpoint_loader
from .convert import convert_checkpoint, convert_state_dict, extract_state_dict

__all__ = ['load_local_checkpoint', 'register_checkpoint_loader', 'convert_checkpoint',
           'convert_state_dict', 'extract_state_dict']
