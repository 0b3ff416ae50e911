"""fastbp's default GOMP_SPINCOUNT: set only when the user chose nothing and libgomp is not loaded."""

import subprocess
import sys

import pytest

from fastbp._kernels import _openmp_env


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(_openmp_env, "_libgomp_loaded", lambda: False)
    return monkeypatch


def test_spin_count_set_when_nothing_chosen(clean_env):
    import os

    assert _openmp_env.set_default_spin_count()
    assert os.environ["GOMP_SPINCOUNT"] == str(_openmp_env.SPIN_COUNT)


@pytest.mark.parametrize("name,value", [("OMP_WAIT_POLICY", "active"), ("GOMP_SPINCOUNT", "300000")])
def test_user_choice_wins(clean_env, name, value):
    import os

    clean_env.setenv(name, value)
    assert not _openmp_env.set_default_spin_count()
    assert os.environ[name] == value
    assert ("GOMP_SPINCOUNT" in os.environ) == (name == "GOMP_SPINCOUNT")


def test_nothing_set_once_libgomp_is_loaded(clean_env):
    import os

    clean_env.setattr(_openmp_env, "_libgomp_loaded", lambda: True)
    assert not _openmp_env.set_default_spin_count()
    assert "GOMP_SPINCOUNT" not in os.environ


def test_a_fresh_process_gets_the_default_before_libgomp_loads():
    code = ("import os, fastbp; fastbp.set_backend('cython'); "
            "from fastbp import _kernels; print(_kernels.OPENMP_SPIN_COUNT_SET, os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", str(_openmp_env.SPIN_COUNT)]
