"""Stage 3, analyse: the facts rules read about a captured model. Reads a ``Capture`` only.

Output: ``AnalysedModel`` (layers, parameter statistics, graph walks), plus the op vocabulary
(``biaslint.analysis.ops``) every rule classifies graph nodes with. Rules import from here and
from nowhere below it.
"""

from biaslint.analysis.model import (
    SHAPE_FUNCTIONS,
    SHAPE_METHODS,
    AnalysedModel,
    Layer,
    ParamStats,
    Use,
    fan_in_out,
    is_shape_only,
)
from biaslint.capture import GraphPart, TensorInfo
from biaslint.capture.shapes import recorded_info, shape_of
from biaslint.vocabulary import (
    MEAN_NORM_FUNCTIONS,
    MEAN_NORM_MODULES,
    PER_CHANNEL_NORM_MODULES,
    POOL_MODULES,
    SCALE_NORM_FUNCTIONS,
    SCALE_NORM_MODULES,
    argument,
    dropout_active,
    is_size_query,
)

__all__ = [
    "MEAN_NORM_FUNCTIONS", "MEAN_NORM_MODULES", "PER_CHANNEL_NORM_MODULES", "POOL_MODULES",
    "SCALE_NORM_FUNCTIONS", "SCALE_NORM_MODULES", "dropout_active",
    "SHAPE_FUNCTIONS", "SHAPE_METHODS", "AnalysedModel", "GraphPart", "Layer", "ParamStats",
    "TensorInfo", "Use", "argument", "fan_in_out", "is_shape_only", "is_size_query",
    "recorded_info", "shape_of",
]
