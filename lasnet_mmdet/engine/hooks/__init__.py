from .las_report_hook import LASReportHook
from .las_visualization_hook import LASDetVisualizationHook
from .latency_loss_hook import LatencyLossHook

__all__ = ['LASReportHook', 'LASDetVisualizationHook', 'LatencyLossHook']
