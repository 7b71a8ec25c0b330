"""The version, in a module of its own: every module may import it without importing the package
(whose ``__init__`` offers the Python API lazily)."""

__version__ = "0.1.0"
