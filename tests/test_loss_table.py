"""One loss table (registry.LOSS_ROWS) and one rule for target values, for the network and the kernels alike."""

import numpy as np
import pytest

import fastbp as fb
from fastbp import kernels, losses
from fastbp._kernels import registry as R


def test_every_loss_has_a_row_and_its_kernels_exist_on_every_backend():
    assert tuple(R.LOSS_ROWS) == R.LOSSES
    for name in fb.available_backends():
        module = fb._backend.backend_module(name)
        for row in R.LOSS_ROWS.values():
            for kernel in filter(None, (row.kernel, row.index_kernel)):
                assert kernel in R.LOSS_KERNELS and callable(losses.loss_kernel(module, kernel))
    assert losses.PREDICT_ACTIVATION == {"mse": "identity", "softmax_cross_entropy": "softmax",
                                         "binary_cross_entropy": "sigmoid"}


@pytest.mark.parametrize("loss,target,match", [
    ("binary_cross_entropy", np.full((2, 3), 1.5), r"targets must lie in \[0, 1\]"),
    ("binary_cross_entropy", np.full((2, 3), -0.5), r"targets must lie in \[0, 1\]"),
    ("softmax_cross_entropy", np.full((2, 3), -0.1), "non-negative probabilities"),
])
def test_the_kernels_and_the_network_refuse_the_same_target_values(backend, loss, target, match):
    output = np.zeros((2, 3))
    with pytest.raises(ValueError, match="target: .*" + match):
        kernels.loss_and_grad(loss, output, target)
    net = fb.Network([fb.Dense(4, 3)], loss=loss, dtype=np.float64)
    with pytest.raises(ValueError, match="y: .*" + match):
        net.fit(np.zeros((2, 4)), target, epochs=1, verbose=0)
