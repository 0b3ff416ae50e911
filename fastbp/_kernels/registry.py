"""Names and integer ids of the activations and losses every backend implements.

The id of an activation is its index in ``ACTIVATIONS``; compiled kernels
receive that id, never the name. Tests loop over these tuples, so adding a
name here without implementing it in every backend fails the suite.
"""

import math
from typing import NamedTuple, Optional, Tuple

ACTIVATIONS = (
    "identity",
    "step",
    "hardtanh",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "softplus",
    "gelu",
    "softmax",
)
ACTIVATION_ID = {name: i for i, name in enumerate(ACTIVATIONS)}

IDENTITY, STEP, HARDTANH, SIGMOID, TANH, RELU, LEAKY_RELU, ELU, SOFTPLUS, GELU, SOFTMAX = range(
    len(ACTIVATIONS)
)

# Constants fixed by the contract (PyTorch's defaults).
LEAKY_RELU_SLOPE = 0.01
ELU_ALPHA = 1.0


class Activation(NamedTuple):
    """One activation's row: every property a layer, a kernel or a check asks about it."""

    id: int
    name: str
    # Its derivative cannot be recovered from the output alone, so the caller keeps
    # the pre-activation z. Every other derivative is computed from the output a
    # (as scikit-learn does), which lets z and a share a buffer.
    keeps_preactivation: bool
    # Applied row-wise (softmax), not element-wise: the GEMM's fused epilogue cannot
    # apply it tile by tile, so it is a separate pass over the finished rows.
    row_wise: bool
    # Nothing to apply: with z and a one buffer the epilogue is skipped.
    is_identity: bool

    @property
    def recurrent(self):
        """A recurrent layer accepts it: element-wise, derivative from the output (the time loop keeps states only)."""
        return not self.keeps_preactivation and not self.row_wise


ACTIVATION_ROWS = {name: Activation(i, name, keeps_preactivation=name == "gelu", row_wise=name == "softmax",
                                    is_identity=name == "identity")
                   for i, name in enumerate(ACTIVATIONS)}

# Derived views of the rows, for the kernels and the checks.
NEEDS_PREACTIVATION = frozenset(row.name for row in ACTIVATION_ROWS.values() if row.keeps_preactivation)
ROW_WISE = frozenset(row.name for row in ACTIVATION_ROWS.values() if row.row_wise)
RECURRENT_ACTIVATIONS = tuple(row.name for row in ACTIVATION_ROWS.values() if row.recurrent)

LOSSES = ("mse", "softmax_cross_entropy", "binary_cross_entropy")

# The loss kernels (a loss with its target format): mlp_loss_and_grad takes the id,
# its index here. softmax_cross_entropy_index takes int64 class indices.
LOSS_KERNELS = ("mse", "softmax_cross_entropy", "softmax_cross_entropy_index", "binary_cross_entropy")
LOSS_KERNEL_ID = {name: i for i, name in enumerate(LOSS_KERNELS)}
MSE, SOFTMAX_CROSS_ENTROPY, SOFTMAX_CROSS_ENTROPY_INDEX, BINARY_CROSS_ENTROPY = range(len(LOSS_KERNELS))


class Loss(NamedTuple):
    """One loss's row: its kernels, its targets and what predict applies to the raw output."""

    name: str
    kernel: str  # the kernel taking target rows of the output's shape
    index_kernel: Optional[str]  # the kernel taking int64 class indices, if the loss takes them
    predict_activation: str  # what predict() applies to the raw output
    takes_logits: bool  # fuses a squashing with the loss: the last layer must not squash too
    target_range: Tuple[float, float]  # bounds of target values (rows)
    min_outputs: int


LOSS_ROWS = {
    "mse": Loss("mse", "mse", None, "identity", False, (-math.inf, math.inf), 1),
    "softmax_cross_entropy": Loss("softmax_cross_entropy", "softmax_cross_entropy", "softmax_cross_entropy_index",
                                  "softmax", True, (0.0, math.inf), 2),
    "binary_cross_entropy": Loss("binary_cross_entropy", "binary_cross_entropy", None, "sigmoid", True,
                                 (0.0, 1.0), 1),
}
assert tuple(LOSS_ROWS) == LOSSES


def activation_id(name):
    """Return the kernel id of activation ``name`` or raise a ValueError listing the known ones."""
    try:
        return ACTIVATION_ID[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; known activations: {', '.join(ACTIVATIONS)}"
        ) from None


def check_loss(name):
    """Return ``name`` if it is a known loss, else raise a ValueError listing the known ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    return name
