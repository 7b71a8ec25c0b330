"""Stage 1, load: a target string becomes a built model, its example inputs, and what the build
recorded (where each layer was constructed, which call last initialized each parameter).

Output: ``LoadedTarget``. Entry point: ``load_target``.
"""

from biaslint.load.build import ExampleInputs, LoadedTarget, load_target

__all__ = ["ExampleInputs", "LoadedTarget", "load_target"]
