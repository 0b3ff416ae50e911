"""The command line: option values checked by argparse before anything runs, --out checked before
training, --version, and the program named as it was called."""

import os
import subprocess
import sys

import pytest

import fastbp as fb
from fastbp import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fb.__file__)))


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the command line gets as far as training."""
    def fit(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(fb.Network, "fit", fit)


def usage_error(capsys, argv):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(argv, prog="fastbp")
    assert excinfo.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
    (["--epochs", "ten"], "argument --epochs: expected an integer >= 1, got 'ten'"),
    (["--threads", "0"], "argument --threads: expected an integer >= 1, got 0"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
    (["--lr", "-1"], "argument --lr: expected a finite number > 0, got -1"),
    (["--lr", "0"], "argument --lr: expected a finite number > 0, got 0"),
    (["--lr", "nan"], "argument --lr: expected a finite number > 0, got nan"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["--task", "sequence", "--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
    (["--task", "sequence", "--hidden", "-3"], "argument --hidden: expected an integer >= 1, got -3"),
    (["--layers", ""], "argument --layers: --layers needs at least one hidden layer size"),
    (["--layers", " , "], "argument --layers: --layers needs at least one hidden layer size"),
    (["--layers", "64,0"], "argument --layers: --layers sizes must be >= 1"),
])
def test_bad_option_values_are_usage_errors(capsys, no_training, argv, message):
    err = usage_error(capsys, argv)
    assert message in err and err.startswith("usage: fastbp") and "Traceback" not in err


def test_out_is_checked_before_training(capsys, no_training, tmp_path):
    err = usage_error(capsys, ["--out", str(tmp_path / "missing" / "model.npz")])
    assert "argument --out: the directory" in err and "does not exist" in err
    err = usage_error(capsys, ["--out", str(tmp_path)])
    assert "argument --out:" in err and "is a directory" in err
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        err = usage_error(capsys, ["--out", str(locked / "model.npz")])
        assert "is not writable" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["--version"], prog="fastbp")
    assert excinfo.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastbp (fastbp {fb.__version__})"


def test_help_names_the_program_as_it_was_called(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/fastbp", "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert capsys.readouterr().out.startswith("usage: fastbp ")
    env = dict(os.environ, PYTHONPATH=ROOT)
    module = subprocess.run([sys.executable, "-m", "fastbp", "--help"], capture_output=True, text=True,
                            cwd=ROOT, env=env)
    assert module.returncode == 0 and module.stdout.startswith("usage: python -m fastbp "), module.stdout
    module = subprocess.run([sys.executable, "-m", "fastbp", "--epochs", "0"], capture_output=True, text=True,
                            cwd=ROOT, env=env)
    assert module.returncode == 2 and "python -m fastbp: error: argument --epochs" in module.stderr


def test_memory_task_prints_both_layers(capsys, tmp_path):
    """--task memory (tiny settings: it runs, prints both test MSEs and the baseline, saves the GRU)."""
    out = tmp_path / "memory.npz"
    assert cli.main(["--task", "memory", "--steps", "5", "--epochs", "2", "--samples", "64", "--hidden", "4",
                     "--quiet", "--out", str(out)], prog="fastbp") == 0
    printed = capsys.readouterr().out
    assert "GRU test MSE" in printed and "RNN test MSE" in printed and "baseline 0.167" in printed
    assert isinstance(fb.load(out).layers[0], fb.GRU)


def test_adding_data_is_the_adding_problem():
    import numpy as np

    X, y = cli.adding_data(200, 9, np.random.default_rng(0))
    assert X.shape == (200, 9, 2) and y.shape == (200, 1)
    assert (X[..., 1].sum(axis=1) == 2).all()
    assert (X[:, :4, 1].sum(axis=1) == 1).all() and (X[:, 5:, 1].sum(axis=1) == 1).all()
    np.testing.assert_allclose(y[:, 0], (X[..., 0] * X[..., 1]).sum(axis=1))
