from .hooks import LASReportHook, LatencyLossHook

__all__ = ['LASReportHook', 'LatencyLossHook']
