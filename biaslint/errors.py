"""Errors a user can cause. Each becomes one line and exit code 2 at the CLI edge."""

from __future__ import annotations


class BiaslintError(Exception):
    """A problem the user can fix: bad target, import failure, bad option or config.

    The message is one line: what went wrong, where, and what to do about it.
    """


class TargetError(BiaslintError):
    """The target string is malformed, cannot be imported, or builds something unusable."""


class InputShapeError(BiaslintError):
    """A malformed ``--input-shape``."""


class ConfigError(BiaslintError):
    """A bad key or value in ``[tool.biaslint]`` or on the command line."""


class PriorsError(BiaslintError):
    """Class priors that cannot be read or make no sense."""


# What the allocators say when memory runs out (torch's CPU allocator, CUDA/MPS, Python).
_OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "DefaultCPUAllocator",
                  "failed to allocate", "not enough memory")


def out_of_memory(exc: BaseException) -> bool:
    """The exception says memory ran out (a MemoryError, torch.OutOfMemoryError, or an
    allocator's RuntimeError), which ``--device meta`` avoids."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in _OUT_OF_MEMORY)


def memory_error(target: str, stage: str, exc: BaseException) -> TargetError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return TargetError(f"{target}: {stage} ran out of memory ({type(exc).__name__}: "
                       f"{first[:160]}); lint it with --device meta, where the parameters take "
                       "no memory and their values are read from the recorded init calls")
