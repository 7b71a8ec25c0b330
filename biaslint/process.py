"""What the process running a lint is: biaslint's own (the command line) or the user's, and
whether a KeyboardInterrupt came from the keyboard.

Kept apart from ``biaslint.load.guard`` (which uses both) because the command line sets them up
before it checks its arguments, and ``biaslint.load`` imports torch: a usage error must be
decided in the fraction of a second Python and click take, not after the seconds torch takes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

_SIGINT_SEEN = False
# The lint's process is biaslint's own (the command line): it ends after the report, so what it
# sets process-wide (``guard.old_objects_frozen``) need not be undone. Set by ``cli.run``.
_OWN_PROCESS = False


def _on_sigint(signum: int, frame: Any) -> None:
    global _SIGINT_SEEN
    _SIGINT_SEEN = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """Within the block, a KeyboardInterrupt that came from the keyboard can be told apart from
    one user code raised (see ``guard.user_code``). Main thread only; a no-op elsewhere."""
    global _SIGINT_SEEN
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SIGINT_SEEN = False
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def real_interrupt() -> bool:
    return _SIGINT_SEEN


def own_process() -> None:
    global _OWN_PROCESS
    _OWN_PROCESS = True


def is_own_process() -> bool:
    return _OWN_PROCESS


# The process is a child the warm server forked for one lint (``biaslint.serve.child``): the
# command line it runs must not hand the lint to a warm server again.
_WARM_CHILD = False


def warm_child() -> None:
    global _WARM_CHILD
    _WARM_CHILD = True


def is_warm_child() -> bool:
    return _WARM_CHILD
