from .backbone_latency_hook import BackboneLatencyHook
from .las_report_hook import LASReportHook
from .las_visualization_hook import LASDetVisualizationHook
from .latency_loss_hook import LatencyLossHook

__all__ = ['BackboneLatencyHook', 'LASReportHook', 'LASDetVisualizationHook', 'LatencyLossHook']
