from .las_report_hook import LASReportHook
from .latency_loss_hook import LatencyLossHook

__all__ = ['LASReportHook', 'LatencyLossHook']
