"""torch.fx traces that do not disturb the server's other threads.

While torch.fx traces (``symbolic_trace``, and ``make_fx`` under ``torch.export``), it patches
``nn.Module.__call__`` and ``__getattr__`` on the class, for the whole process. A server runs other
sessions' forwards in other threads meanwhile; each of their module calls entered the trace and failed
(``NameError: module is not installed as a submodule``). Two traces at once also restore each other's
patches in the wrong order. This is torch's known limitation (pytorch/pytorch#187589 confines the
module patches to the tracing thread, and leaves concurrent traces unsupported).

:func:`confine_fx_patches` does the same here, once per process: the two ``nn.Module`` patches act only
in the thread that made them (other threads see the methods they replaced), and fx traces run one at a
time. The Residual tab's block finder and the Diagram tab's tracer call it before they trace.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Iterator

from torch import nn
from torch.fx import _symbolic_trace as fx_trace

_CONFINED = ("__call__", "__getattr__")
_TRACES = threading.RLock()     # re-entrant: a trace may start another in its own thread (make_fx)
_installed = False
_install_lock = threading.Lock()


def confine_fx_patches() -> None:
    """Make every later fx trace in this process safe beside other threads (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        patch_method, new_patcher = fx_trace._Patcher.patch_method, fx_trace._new_patcher

        def confined_patch_method(self, cls: type, name: str, new_fn: Callable, deduplicate: bool = True) -> None:
            if cls is nn.Module and name in _CONFINED:
                new_fn = _this_thread_only(new_fn, getattr(cls, name))
            patch_method(self, cls, name, new_fn, deduplicate)

        @contextlib.contextmanager
        def one_trace_at_a_time() -> Iterator[Any]:
            with _TRACES, new_patcher() as patcher:
                yield patcher

        fx_trace._Patcher.patch_method = confined_patch_method
        fx_trace._new_patcher = one_trace_at_a_time
        _installed = True


def _this_thread_only(patched: Callable, replaced: Callable) -> Callable:
    """``patched`` in the thread that is tracing now, ``replaced`` (what it patched over) in any other."""
    owner = threading.get_ident()

    @functools.wraps(patched)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        return (patched if threading.get_ident() == owner else replaced)(*args, **kwargs)
    return dispatch
