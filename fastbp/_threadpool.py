"""fastbp's thread pool as threadpoolctl sees it: listed, and limited.

Design: threadpoolctl's documented extension point is a ``LibController``
subclass passed to ``threadpoolctl.register``; ``threadpool_info()`` and
``threadpool_limits()`` then create one controller per loaded shared library
whose file name starts with one of its ``filename_prefixes``. fastbp's thread
count is Python state (``fastbp._backend``), so the controller matches a tiny
compiled module kept for that purpose, ``fastbp._fastbp_threadpool``, and reads
and sets the count through ``fastbp._backend``.

user_api is "openmp": fastbp's parallel kernels are OpenMP parallel regions
(Cython ``prange`` on libgomp; Numba's "omp" threading layer) and their default
size follows ``OMP_NUM_THREADS``, so code that limits OpenMP to avoid
oversubscription (``threadpool_limits(1, user_api="openmp")``) limits fastbp
too. internal_api "fastbp" tells it apart from the OpenMP runtime itself:
libgomp also appears in ``threadpool_info()``, but its count does not govern
fastbp, whose kernels pass their thread count to every parallel region.

threadpoolctl is optional: ``register`` does nothing when it is not installed
(or older than 3.2, which has no ``register``).
"""

import importlib
import sys

from . import _backend

ANCHOR_MODULE = "fastbp._fastbp_threadpool"
_registered = False


def _controller_class(LibController):
    """fastbp's controller, a subclass of threadpoolctl's ``LibController``."""

    class FastbpController(LibController):
        user_api = "openmp"
        internal_api = "fastbp"
        filename_prefixes = ("_fastbp_threadpool",)
        check_symbols = ("PyInit__fastbp_threadpool",)  # the anchor module's only export

        def get_num_threads(self):
            return _backend.get_num_threads()

        def set_num_threads(self, num_threads):
            # threadpoolctl asks for an upper bound (threadpool_limits(64) on 2 cores
            # is valid); fastbp never runs more threads than usable cores.
            _backend.set_num_threads(max(1, min(int(num_threads), _backend._max_threads())))

        def get_version(self):
            from . import __version__

            return __version__

    return FastbpController


def _threadpoolctl_modules():
    """threadpoolctl's module, and its second copy when ``python -m threadpoolctl`` runs as __main__.

    ``python -m threadpoolctl -i fastbp`` imports fastbp from a module named
    __main__, not threadpoolctl: a controller registered with the imported copy
    only would not be listed there.
    """
    import threadpoolctl

    modules = [threadpoolctl]
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == "threadpoolctl":
        modules.append(main)
    return modules


def register():
    """Register fastbp's controller with threadpoolctl; True if it was (now or before).

    Importing threadpoolctl costs ~1.5 ms after NumPy; when it is not installed
    the failed import is all this costs.
    """
    global _registered
    if _registered:
        return True
    try:
        modules = _threadpoolctl_modules()
    except ImportError:
        return False
    if not all(hasattr(module, "register") for module in modules):  # threadpoolctl < 3.2
        return False
    try:
        importlib.import_module(ANCHOR_MODULE)  # loaded, so that threadpoolctl finds it
    except ImportError:  # a source tree whose extensions are not built
        return False
    for module in modules:
        module.register(_controller_class(module.LibController))
    _registered = True
    return True
