"""Stage 2, capture: the model's graphs (torch.fx), with shapes recorded on the nodes, and
coverage. Reads a ``LoadedTarget`` only.

With example inputs the graph is recorded from the model's own forward on fake tensors
(``record``); symbolic tracing per submodule (``trace``, ``concrete``) is the way when there are
no inputs or the forward fails on them.

Output: ``Capture``. Entry point: ``capture``.
"""

from biaslint.capture.shapes import TensorInfo
from biaslint.capture.trace import Capture, GraphPart, capture

__all__ = ["Capture", "GraphPart", "TensorInfo", "capture"]
