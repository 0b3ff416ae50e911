"""Build fastbp's Cython/OpenMP kernels (fastbp/_kernels/cython).

Flags: -O3, -fno-math-errno and -fno-trapping-math (no code reads the FP
exception flags; without it GCC will not turn the selects of a branch-free
activation such as the float32 tanh into vector blends), never -ffast-math
(the kernels rely on IEEE NaN/inf/signed-zero semantics) and never
-march=native: the extensions run on any x86-64 and pick AVX2/AVX-512
micro-kernels at run time (see microkernels.h). OpenMP is used when a tiny
OpenMP program compiles and links (and FASTBP_NO_OPENMP is not set);
otherwise the kernels are built serial, with a warning, and
fastbp._kernels.cython.OPENMP is False.
"""

import os
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNEL_DIR = os.path.join("fastbp", "_kernels", "cython")
MODULES = ("_threads", "_activations", "_gemm", "_losses", "_dense", "_mlp", "_optim", "_rnn", "_gated", "_conv", "_pool")

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return omp_get_max_threads() > 0 && n > 0 ? 0 : 1;
    }
    """
)


def _flags(compiler_type):
    """(compile flags, link flags, OpenMP compile flags, OpenMP link flags) for this compiler."""
    if compiler_type == "msvc":
        return ["/O2", "/fp:precise"], [], ["/openmp"], []
    # -ffp-contract=off: the FMA-capable ISA clones (optimizer_steps.h) must round
    # as the baseline build and the NumPy reference do (no fused multiply-add
    # unless a kernel asks for one with an intrinsic, as the GEMM does).
    return (["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"], [],
            ["-fopenmp"], ["-fopenmp"])


def _openmp_works(compiler, compile_flags, link_flags):
    """True when the compiler builds and links a tiny OpenMP program with these flags."""
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "omp_probe.c")
        with open(source, "w") as f:
            f.write(OPENMP_PROBE)
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=compile_flags)
            compiler.link_executable(objects, "omp_probe", output_dir=tmp, extra_postargs=link_flags)
        except Exception:  # CompileError, LinkError, or a missing tool
            return False
    return True


class BuildExt(build_ext):
    """build_ext that adds optimisation flags and OpenMP when the compiler supports it."""

    def build_extensions(self):
        compile_flags, link_flags, omp_compile, omp_link = _flags(self.compiler.compiler_type)
        disabled = os.environ.get("FASTBP_NO_OPENMP", "") not in ("", "0")
        use_openmp = not disabled and _openmp_works(self.compiler, omp_compile, omp_link)
        if use_openmp:
            compile_flags, link_flags = compile_flags + omp_compile, link_flags + omp_link
        else:
            reason = ("FASTBP_NO_OPENMP is set" if disabled else
                      f"the C compiler cannot build OpenMP programs (tried {' '.join(omp_compile)})")
            sys.stderr.write(
                f"\nWARNING: fastbp: {reason}; the Cython kernels are built SERIAL "
                "(fastbp._kernels.cython.OPENMP is False, n_threads is ignored).\n\n"
            )
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args) + compile_flags
            ext.extra_link_args = list(ext.extra_link_args) + link_flags
        super().build_extensions()


def _extensions():
    from Cython.Build import cythonize

    extensions = [
        Extension(
            f"fastbp._kernels.cython.{name}",
            [os.path.join(KERNEL_DIR, f"{name}.pyx")],
            include_dirs=[KERNEL_DIR],
            depends=[os.path.join(KERNEL_DIR, header) for header in ("microkernels.h", "thread_workspace.h",
                                                                         "optimizer_steps.h", "conv_workspace.h",
                                                                         "gated_rows.h", "tanh_rational.h",
                                                                         "pool_windows.h", "conv_gather.h")],
        )
        for name in MODULES
    ]
    # Empty: the shared library by which threadpoolctl finds fastbp's thread pool.
    extensions.append(Extension("fastbp._fastbp_threadpool", [os.path.join("fastbp", "_fastbp_threadpool.pyx")]))
    return cythonize(
        extensions,
        include_path=["."],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
