"""Stage 2, capture: the model's graphs (torch.fx), with shapes recorded on the nodes, the
modules kept opaque, and coverage. Reads a ``LoadedTarget`` only.

Output: ``Capture``. Entry point: ``capture``.
"""

from biaslint.capture.shapes import TensorInfo
from biaslint.capture.trace import Capture, GraphPart, capture

__all__ = ["Capture", "GraphPart", "TensorInfo", "capture"]
