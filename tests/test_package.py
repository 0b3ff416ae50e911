"""The package as shipped: LICENSE matching the metadata, py.typed, and type hints that resolve."""

import os

import fastbp as fb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fb.__file__)))


def test_package_ships_license_and_type_marker():
    assert os.path.isfile(os.path.join(os.path.dirname(fb.__file__), "py.typed"))
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert "BSD 3-Clause" in text or "Redistribution and use in source and binary forms" in text
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    assert 'license = { text = "BSD-3-Clause" }' in pyproject and '"fastbp" = ["py.typed"]' in pyproject


def test_public_type_hints_resolve():
    """py.typed promises hints: every annotated public signature must evaluate (no dangling names)."""
    import inspect
    import typing

    from fastbp import kernels, optim

    checked = 0
    for module in (kernels, optim, fb.serialization):
        for name in module.__all__:
            obj = getattr(module, name)
            for function in [obj] + [m for _, m in inspect.getmembers(obj, inspect.isfunction)] \
                    if inspect.isclass(obj) else [obj]:
                if callable(function) and getattr(function, "__annotations__", None):
                    typing.get_type_hints(function, localns={"Network": fb.Network, "Optimizer": fb.optim.Optimizer})  # TYPE_CHECKING imports
                    checked += 1
    for _, method in inspect.getmembers(fb.Network, inspect.isfunction):
        typing.get_type_hints(method)
        checked += 1
    assert checked > 30


def test_import_fastbp_imports_no_optional_dependency():
    """The extras (SciPy, scikit-learn, PyTorch, ONNX, Dask) and Numba load only where they are used.

    Each costs 0.1-1 s of import: ``import fastbp`` must not pay for them (a fresh
    interpreter, so that this test session's own imports do not count).
    """
    import subprocess
    import sys

    heavy = ("scipy", "sklearn", "torch", "onnx", "onnxruntime", "dask", "distributed", "numba", "jax")
    code = f"import sys, fastbp; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import fastbp imported {out.strip()}"
