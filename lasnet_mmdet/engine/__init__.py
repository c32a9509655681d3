from .hooks import BackboneLatencyHook, LASReportHook, LatencyLossHook

__all__ = ['BackboneLatencyHook', 'LASReportHook', 'LatencyLossHook']
