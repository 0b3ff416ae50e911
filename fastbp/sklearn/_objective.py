"""scikit-learn's MLP objective computed by fastbp's kernels.

scikit-learn's MLP minimises, over a batch of n samples with weights w (1 when
not given) and the L2 penalty on the weight matrices only (not the biases)::

    Σ_i w_i·ℓ(x_i, y_i) / Σ_i w_i  +  alpha/(2·Σ_i w_i) · Σ_l ||W_l||²

Its losses are fastbp's up to a constant factor per output layer (the table
``OUTPUTS``), so the data term is one fastbp kernel call: the fused
``mlp_loss_and_grad`` when every weight is 1 and the factor is 1 (softmax),
otherwise the layer-by-layer passes with the output delta scaled row by row
between the loss kernel and the backward pass — backward is linear in the
delta, so scaling row i by ``factor·w_i·n/Σw`` gives exactly the gradient of
the weighted mean. The weighted loss value needs each sample's loss, which
the kernels do not return: ``_sample_losses`` computes it from the logits.
"""

import numpy as np

from .. import _backend
from .._kernels import registry as _registry

# out_activation_ -> (fastbp loss, loss factor(k), gradient factor(k)), k = n_outputs.
# softmax: scikit-learn's log_loss is the mean over samples of -log p_y, as fastbp's.
# logistic: scikit-learn sums the binary log-loss over outputs, fastbp averages: k.
# identity: scikit-learn reports 0.5·mean over outputs of the squared error (0.5 x fastbp's mse),
#   but its gradient is (ŷ - y)/n, that of the squared error summed over outputs: k/2 x fastbp's.
OUTPUTS = {
    "softmax": ("softmax_cross_entropy", lambda k: 1.0, lambda k: 1.0),
    "logistic": ("binary_cross_entropy", lambda k: float(k), lambda k: float(k)),
    "identity": ("mse", lambda k: 0.5, lambda k: k / 2.0),
}


def _sample_losses(kernel, logits, y):
    """Each sample's fastbp loss (the kernel's mean is their mean), shape (n_samples,)."""
    if kernel == "softmax_cross_entropy_index":
        top = logits.max(axis=1)
        log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        return log_norm - logits[np.arange(logits.shape[0]), y]
    if kernel == "binary_cross_entropy":
        return (np.logaddexp(0, logits) - y * logits).mean(axis=1)
    return ((logits - y) ** 2).mean(axis=1)  # mse


class Objective:
    """Loss and gradient of scikit-learn's MLP objective for the network ``net``.

    Parameters
    ----------
    net : fastbp.Network of Dense layers
        Its ``params`` are the point of evaluation; ``__call__`` fills its ``grads``.
    out_activation : {"softmax", "logistic", "identity"}
    alpha : float >= 0
        L2 penalty on the weight matrices.
    """

    def __init__(self, net, out_activation, alpha):
        loss, loss_factor, grad_factor = OUTPUTS[out_activation]
        self.net = net
        self.kernel = "softmax_cross_entropy_index" if loss == "softmax_cross_entropy" else loss
        self.loss_factor = loss_factor(net.n_outputs)
        self.grad_factor = grad_factor(net.n_outputs)
        self.alpha = float(alpha)
        # Each W_l is one contiguous block of the flat vectors (W_1, b_1, W_2, b_2, ...).
        self._weights, offset = [], 0
        for layer in net.layers:
            self._weights.append(slice(offset, offset + layer.n_in * layer.n_out))
            offset += layer.n_params
        self._scratch = np.empty(max(s.stop - s.start for s in self._weights), net.dtype)

    def __call__(self, x, y, sample_weight=None):
        """Data loss and full gradient on a batch; fills ``net.grads``.

        Parameters
        ----------
        x : C-contiguous ndarray of shape (n_samples, n_features), the network's dtype
        y : C-contiguous int64 ndarray of shape (n_samples,) (softmax), or of shape
            (n_samples, n_outputs) and the network's dtype
        sample_weight : ndarray of shape (n_samples,), optional

        Returns
        -------
        data_loss : float
            fastbp's (weighted) mean loss, without factor nor penalty: scikit-learn
            reports ``loss_factor·data_loss + penalty``, and ``grads`` is the gradient of
            ``grad_factor·data_loss + penalty``.
        penalty : float
            ``alpha/(2·Σw)·Σ||W_l||²``, at the parameters before this call.
        """
        net = self.net
        n_samples = x.shape[0]
        weight_sum = float(n_samples if sample_weight is None else sample_weight.sum())
        backend, n_threads = _backend.runtime()
        ws = net._workspace(x.shape)
        if sample_weight is None and self.grad_factor == 1.0 and net._stack is not None:
            data_loss = float(backend.mlp_loss_and_grad(
                x, y, _registry.LOSS_KERNEL_ID[self.kernel], *net._stack, net.params, net.grads, *ws.flat,
                n_threads))
        else:
            net._forward(ws, x, backend, n_threads)
            data_loss = float(net._loss(ws, y, self.kernel, backend, n_threads))
            row_scale = self.grad_factor
            if sample_weight is not None:
                row_scale = (self.grad_factor * n_samples / weight_sum) * sample_weight
                data_loss = float(np.dot(sample_weight, _sample_losses(self.kernel, ws.output, y))
                                  / weight_sum)
                row_scale = row_scale.astype(net.dtype, copy=False)[:, None]
            np.multiply(ws.delta, row_scale, out=ws.delta)
            net._backward(ws, x, backend, n_threads)
        return data_loss, self._penalize(weight_sum)

    def _penalize(self, weight_sum):
        """Add alpha/Σw·W_l to each dW_l in place; return the penalty alpha/(2Σw)·Σ||W_l||²."""
        if self.alpha == 0.0:
            return 0.0
        coef = self.alpha / weight_sum
        squares = 0.0
        params, grads = self.net.params, self.net.grads
        for block in self._weights:
            w = params[block]
            # einsum's own loop, not BLAS (see fastbp.optim.clip_grads: BLAS threads would spin
            # on the cores the kernels need next).
            squares += float(np.einsum("i,i->", w, w))
            scaled = np.multiply(w, coef, out=self._scratch[:w.size])
            grads[block] += scaled
        return 0.5 * coef * squares
