"""Bad input to every public kernel is a TypeError/ValueError naming the argument, never a crash."""

import numpy as np
import pytest

from fastbp import kernels

F32, F64 = np.float32, np.float64


def m(*shape, dtype=F64):
    return np.ones(shape, dtype)


GEMM_CASES = [
    (dict(a=[[1.0]], b=m(1, 1)), TypeError, "a must be a numpy.ndarray"),
    (dict(a=m(2, 2, dtype=np.int64), b=m(2, 2)), TypeError, "a must have dtype float32 or float64, got int64"),
    (dict(a=m(2, 2), b=m(2, 2, dtype=F32)), TypeError, "b has dtype float32"),
    (dict(a=m(3), b=m(3, 2)), ValueError, r"a must be 2-D, got shape \(3,\)"),
    (dict(a=m(2, 3), b=m(4, 2)), ValueError, r"op\(a\) has shape \(2, 3\) and op\(b\) has shape \(4, 2\)"),
    (dict(a=m(2, 3), b=m(2, 3), trans_b=False), ValueError, "inner dimensions 3 and 2"),
    (dict(a=m(2, 3), b=m(3, 2), out=m(3, 3)), ValueError, r"out must have shape \(2, 2\), got \(3, 3\)"),
    (dict(a=m(2, 3), b=m(3, 2), out=m(2, 2, dtype=F32)), TypeError, "out must have dtype float64"),
    (dict(a=m(2, 3), b=m(3, 2), out=np.ones((2, 2), order="F")), ValueError, "out must be C-contiguous"),
    (dict(a=m(2, 3), b=m(3, 2), beta=1.0), ValueError, "beta != 0 needs an out array"),
    (dict(a=m(2, 3), b=m(3, 2), alpha=float("nan")), ValueError, "alpha must be finite"),
    (dict(a=m(2, 3), b=m(3, 2), alpha="2"), TypeError, "alpha must be a real number"),
]


@pytest.mark.parametrize("kwargs,error,message", GEMM_CASES)
def test_gemm_bad_input(backend, kwargs, error, message):
    with pytest.raises(error, match=message):
        kernels.gemm(**kwargs)


def test_read_only_out_is_rejected_before_writing(backend):
    out = m(2, 2)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        kernels.gemm(m(2, 2), m(2, 2), out=out)


def test_dense_forward_bad_input(backend):
    with pytest.raises(ValueError, match=r"x has shape \(4, 3\) \(3 features\) but w has shape \(5, 2\)"):
        kernels.dense_forward(m(4, 3), m(5, 2), m(2))
    with pytest.raises(ValueError, match=r"b must have shape \(2,\)"):
        kernels.dense_forward(m(4, 3), m(3, 2), m(3))
    with pytest.raises(ValueError, match="unknown activation 'swish'; known activations: identity, step"):
        kernels.dense_forward(m(4, 3), m(3, 2), m(2), "swish")
    with pytest.raises(TypeError, match="w has dtype float32"):
        kernels.dense_forward(m(4, 3), m(3, 2, dtype=F32), m(2))
    x = m(4, 3)
    with pytest.raises(ValueError, match="out must not overlap the inputs"):
        kernels.dense_forward(x, m(3, 3), m(3), out=x)


def test_dense_backward_bad_input(backend):
    x, w, a = m(4, 3), m(3, 2), m(4, 2)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(4, 2\)"):
        kernels.dense_backward(x, w, a, m(4, 3))
    with pytest.raises(ValueError, match=r"dw_out must have shape \(3, 2\)"):
        kernels.dense_backward(x, w, a, a.copy(), dw_out=m(2, 3))
    with pytest.raises(ValueError, match="accumulate=True needs dw_out and db_out"):
        kernels.dense_backward(x, w, a, a.copy(), accumulate=True)
    with pytest.raises(ValueError, match="needs the preactivation"):
        kernels.dense_backward(x, w, a, a.copy(), "gelu")


def test_activation_bad_input(backend):
    with pytest.raises(ValueError, match=r"z must be 2-D, got shape \(3,\)"):
        kernels.activation("relu", m(3))
    with pytest.raises(TypeError, match="z must have dtype float32 or float64, got int64"):
        kernels.activation("relu", np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match="unknown activation"):
        kernels.activation(None, m(2, 2))
    with pytest.raises(ValueError, match=r"output must have shape \(2, 2\), got \(2, 3\)"):
        kernels.activation_grad("tanh", m(2, 2), m(2, 3))


def test_loss_bad_input(backend):
    with pytest.raises(ValueError, match="unknown loss 'hinge'; known losses: mse"):
        kernels.loss("hinge", m(2, 2), m(2, 2))
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\), got values in \[0, 3\]"):
        kernels.loss("softmax_cross_entropy", m(2, 3), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\), got values in \[-1, 0\]"):
        kernels.loss("softmax_cross_entropy", m(2, 3), np.array([0, -1]))
    with pytest.raises(TypeError, match="class-index targets must be integers"):
        kernels.loss("softmax_cross_entropy", m(2, 3), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="target has 3 labels but output has 2 rows"):
        kernels.loss("softmax_cross_entropy", m(2, 3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"target must have the shape of output \(2, 3\), got \(3, 2\)"):
        kernels.loss("mse", m(2, 3), m(3, 2))
    with pytest.raises(TypeError, match="target must be numeric"):
        kernels.loss("mse", m(1, 2), np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="output must not be empty"):
        kernels.loss("mse", m(0, 2), m(0, 2))
