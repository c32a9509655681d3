from .masker import Masker

__all__ = ['Masker']
