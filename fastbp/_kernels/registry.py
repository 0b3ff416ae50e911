"""Names and integer ids of the activations and losses every backend implements.

The id of an activation is its index in ``ACTIVATIONS``; compiled kernels
receive that id, never the name. Tests loop over these tuples, so adding a
name here without implementing it in every backend fails the suite.
"""

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

# Activations whose derivative cannot be recovered from the output alone, so
# the caller must keep the pre-activation z. Every other derivative is computed
# from the output a (as scikit-learn does), which lets z and a share a buffer.
NEEDS_PREACTIVATION = frozenset({"gelu"})

# Activations applied row-wise rather than element-wise.
ROW_WISE = frozenset({"softmax"})

# Activations a recurrent layer accepts: element-wise, derivative from the output
# (the time loop keeps the states only).
RECURRENT_ACTIVATIONS = tuple(name for name in ACTIVATIONS
                              if name not in NEEDS_PREACTIVATION and name not in ROW_WISE)

LOSSES = ("mse", "softmax_cross_entropy", "binary_cross_entropy")

# The loss kernels (a loss with its target format): mlp_loss_and_grad takes the id,
# its index here. softmax_cross_entropy_index takes int64 class indices.
LOSS_KERNELS = ("mse", "softmax_cross_entropy", "softmax_cross_entropy_index", "binary_cross_entropy")
LOSS_KERNEL_ID = {name: i for i, name in enumerate(LOSS_KERNELS)}
MSE, SOFTMAX_CROSS_ENTROPY, SOFTMAX_CROSS_ENTROPY_INDEX, BINARY_CROSS_ENTROPY = range(len(LOSS_KERNELS))


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
