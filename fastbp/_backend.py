"""Which kernel backend runs, and on how many threads.

The state is process-wide, like NumPy's error state: ``set_backend`` and
``set_num_threads`` change it, ``backend(name)`` changes it for a ``with``
block. Each public kernel reads it once per call and passes ``n_threads`` to the
compiled code explicitly, so both backends obey the same count, and since at most
one backend runs a kernel at a time the cores are never oversubscribed.

Until ``set_num_threads`` is called, the count is the one OpenMP programs start
with: the first value of ``OMP_NUM_THREADS`` when it is set (capped at the usable
cores), otherwise the usable cores. It is read once, when a kernel first needs
it; launchers that limit their workers' threads (joblib's loky workers, Dask's
nannies) set that variable before the worker starts. threadpoolctl sees and
limits the same count (``fastbp/_threadpool.py``).
"""

import contextlib
import importlib
import os
import warnings

BACKENDS = ("cython", "numba")
_PREFERENCE = ("cython", "numba")  # fastest first: used when choosing the default

_state = {"backend": None, "n_threads": None}
_modules = {}
_load_errors = {}


def _max_threads():
    """The usable cores: those this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _threads_from_environment(value):
    """The thread count ``OMP_NUM_THREADS=value`` asks for, or None when it asks for none.

    OpenMP reads the variable as a comma-separated list of positive integers, one
    per level of nested parallelism; fastbp's kernels are one level, so the
    first value counts. Unset or blank means no request. Anything else that is
    not a positive integer is ignored with a RuntimeWarning, as libgomp ignores
    it (with a message) rather than fail.
    """
    if value is None or not value.strip():
        return None
    first = value.split(",")[0].strip()
    if first.isascii() and first.isdigit() and int(first) > 0:  # isdigit alone takes "²"
        return int(first)
    warnings.warn(
        f"fastbp: OMP_NUM_THREADS={value!r} is not a positive integer (or a comma-separated "
        "list of them); ignored, the kernels use every usable core",
        RuntimeWarning,
        stacklevel=4,
    )
    return None


def _default_num_threads():
    """OMP_NUM_THREADS's first value capped at the usable cores, else the usable cores."""
    requested = _threads_from_environment(os.environ.get("OMP_NUM_THREADS"))
    usable = _max_threads()
    return usable if requested is None else min(requested, usable)


def _load(name):
    """Import backend ``name`` once; raise ImportError naming what is missing."""
    if name in _modules:
        return _modules[name]
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    if name in _load_errors:
        raise ImportError(_load_errors[name])
    try:
        module = importlib.import_module(f"fastbp._kernels.{name}")
    except ImportError as exc:
        hint = (
            "the compiled Cython extensions are missing: reinstall fastbp with "
            "`pip install .` (a C compiler is needed)"
            if name == "cython"
            else "numba is not installed: `pip install numba`"
        )
        _load_errors[name] = f"backend {name!r} cannot be loaded ({exc}); {hint}"
        raise ImportError(_load_errors[name]) from exc
    _modules[name] = module
    return module


def available_backends():
    """Names of the backends that load in this process, fastest first."""
    found = []
    for name in _PREFERENCE:
        try:
            _load(name)
        except ImportError:
            continue
        found.append(name)
    return tuple(found)


def get_backend():
    """Name of the backend kernels run on ('cython' or 'numba')."""
    if _state["backend"] is None:
        # The first that loads, in order of preference: the others are not imported
        # (numba's import alone takes ~0.3 s, more than the Cython backend's first step).
        for name in _PREFERENCE:
            try:
                _load(name)
            except ImportError:
                continue
            _state["backend"] = name
            break
        else:
            raise ImportError(
                "no fastbp backend can be loaded: " + "; ".join(_load_errors.values())
            )
    return _state["backend"]


def set_backend(name):
    """Run kernels on backend ``name``: 'cython' or 'numba'.

    Raises ValueError for an unknown name and ImportError, naming what is
    missing, for a backend that cannot be loaded; the current backend is kept.
    """
    _load(name)
    _state["backend"] = name


@contextlib.contextmanager
def backend(name):
    """Context manager running the kernels of its block on backend ``name``."""
    previous = get_backend()
    set_backend(name)
    try:
        yield name
    finally:
        _state["backend"] = previous


def backend_module(name=None):
    """The kernel module of backend ``name`` (default: the current one)."""
    return _load(name or get_backend())


def runtime():
    """(backend module, thread count): what every kernel call runs on, fetched in this one place.

    A caller fetches them once per batch of work (an epoch, a public call) and
    passes them on, so a kernel never looks them up itself.
    """
    return backend_module(), get_num_threads()


def get_num_threads():
    """Number of threads every parallel kernel uses.

    Until ``set_num_threads`` (or threadpoolctl's ``threadpool_limits``) sets it:
    the first value of ``OMP_NUM_THREADS`` capped at the usable cores when that
    variable is set, otherwise the usable cores.
    """
    if _state["n_threads"] is None:
        _state["n_threads"] = _default_num_threads()
    return _state["n_threads"]


def set_num_threads(n):
    """Use ``n`` threads, 1 <= n <= the number of usable cores, on both backends.

    Results are bitwise identical for any ``n``: every reduction runs in a fixed order.
    """
    limit = _max_threads()
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"n_threads must be an integer, got {type(n).__name__}")
    n = int(n)
    if not 1 <= n <= limit:
        raise ValueError(f"n_threads must be between 1 and {limit} (usable cores), got {n}")
    _state["n_threads"] = n
