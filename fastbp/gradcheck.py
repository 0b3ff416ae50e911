"""Gradient checking: backpropagation against central finite differences."""

import numpy as np

__all__ = ["gradcheck"]


def _float64_twin(network):
    """A float64 Network with ``network``'s architecture, loss and weights."""
    from .layers import layer_from_config
    from .network import Network

    layers = [layer_from_config(layer.get_config()) for layer in network.layers]
    twin = Network(layers, loss=network.loss, dtype=np.float64)
    twin.params[...] = network.params
    return twin


def gradcheck(network, X, y, eps=1e-6, atol=1e-8, max_checks=None, seed=0):
    """Compare backprop gradients with central finite differences, parameter by parameter.

    For each checked element p of each parameter, the numerical gradient is
    ``(L(p + eps) - L(p - eps)) / (2·eps)`` with L the mean loss over (X, y),
    and the relative error is ``|g_bp - g_fd| / max(|g_bp|, |g_fd|, atol)``.
    The check runs in float64 (in float32 the differences would be dominated
    by rounding): a float32 network is checked through a float64 twin with the
    same architecture and weights. The parameters are restored exactly;
    afterwards the network's gradients are the backprop gradients at those
    parameters.

    Parameters
    ----------
    network : Network
    X : array-like of shape (n_samples, n_inputs)
    y : array-like of targets, as for ``Network.backward``
    eps : float
        Finite-difference step.
    atol : float
        Floor of the denominator, so gradients that are both ~0 compare absolutely.
    max_checks : int or None
        Check at most this many elements per parameter, drawn at random with
        ``seed`` (None: every element).
    seed : int

    Returns
    -------
    errors : dict
        ``{"layers.0.W": worst relative error, "layers.0.b": ..., ...}``.
    """
    network.forward(X)
    network.backward(y)
    if network.dtype != np.float64:
        network = _float64_twin(network)
        network.forward(X)
        network.backward(y)
    X = network._check_X(X)
    y, loss_kernel = network._check_y(y, X.shape[0], n_steps=network._n_steps(X))
    rng = np.random.default_rng(seed)
    errors = {}
    for name, param, grad in network.named_parameters():
        flat_param, flat_grad = param.reshape(-1), grad.reshape(-1).copy()
        indices = np.arange(flat_param.size)
        if max_checks is not None and flat_param.size > max_checks:
            indices = rng.choice(flat_param.size, size=max_checks, replace=False)
        worst = 0.0
        for i in indices:
            original = flat_param[i]
            flat_param[i] = original + eps
            up = float(flat_param[i])  # the step actually taken, after rounding to the dtype
            loss_plus = network._evaluate(X, y, loss_kernel)
            flat_param[i] = original - eps
            down = float(flat_param[i])
            loss_minus = network._evaluate(X, y, loss_kernel)
            flat_param[i] = original
            numerical = (loss_plus - loss_minus) / (up - down)
            analytic = float(flat_grad[i])
            error = abs(analytic - numerical) / max(abs(analytic), abs(numerical), atol)
            worst = max(worst, error)
        errors[name] = worst
    return errors
