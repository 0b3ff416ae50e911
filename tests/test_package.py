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
