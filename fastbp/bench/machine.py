"""The machine a benchmark ran on, for the header of every table: CPU model, cores, ISA."""

import platform

from ._common import usable_cores


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo on Linux; platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def backend_isas():
    """{backend name: the ISA its GEMM micro-kernels run}, for the backends that load."""
    isas = {}
    for name in ("cython", "numba"):
        try:
            module = __import__(f"fastbp._kernels.{name}", fromlist=["ISA"])
        except ImportError:
            continue
        isas[name] = module.ISA
    return isas


def describe():
    """One line: CPU model, usable cores, and each backend's ISA (avx512, avx2 or generic)."""
    cores = usable_cores()
    isas = ", ".join(f"{name} {isa}" for name, isa in backend_isas().items()) or "no backend loads"
    return f"machine: {cpu_model()}, {cores} cores; ISA: {isas}"
