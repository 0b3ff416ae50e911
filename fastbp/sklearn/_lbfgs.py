"""solver="lbfgs": SciPy's L-BFGS-B on the full-batch objective computed by fastbp's kernels.

The network's flat ``params`` vector is exactly the point SciPy iterates on,
and its flat ``grads`` vector the gradient it asks for, so each evaluation is
one copy in, one fastbp full-batch loss-and-gradient, one copy out.
"""

import numpy as np


def fit_lbfgs(objective, X, y, sample_weight, *, max_iter, max_fun, tol, verbose):
    """Minimise ``objective`` over ``objective.net.params`` with L-BFGS-B, as scikit-learn's MLP does.

    Parameters
    ----------
    objective : fastbp.sklearn._objective.Objective
    X : C-contiguous ndarray of shape (n_samples, n_features), the network's dtype
    y : targets in the objective's format
    sample_weight : ndarray of shape (n_samples,) or None
    max_iter, max_fun : int
        SciPy's ``maxiter`` and ``maxfun``.
    tol : float
        SciPy's ``gtol``.
    verbose : bool or int

    Returns
    -------
    n_iter : int
        Iterations run; ``ConvergenceWarning`` was issued if L-BFGS-B did not converge.
    loss : float
        The objective at the solution (its data term summed over outputs; see ``Objective``).
    """
    import scipy.optimize
    from sklearn.utils.optimize import _check_optimize_result
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    net = objective.net

    def loss_and_grad(theta):
        np.copyto(net.params, theta, casting="same_kind")
        data_loss, penalty = objective(X, y, sample_weight)
        return objective.grad_factor * data_loss + penalty, net.grads.astype(np.float64)

    # L-BFGS-B's own work is a few BLAS vector operations per iteration; threaded, their idle
    # BLAS threads spin on the cores fastbp's kernels need next (7x slower on 2 busy cores).
    with threadpool_limits(limits=1, user_api="blas"):
        result = scipy.optimize.minimize(
            loss_and_grad, net.params.astype(np.float64), method="L-BFGS-B", jac=True,
            options={"maxfun": max_fun, "maxiter": max_iter, "gtol": tol})
    n_iter = _check_optimize_result("lbfgs", result, max_iter)
    if verbose:  # SciPy >= 1.15 dropped L-BFGS-B's own printing (iprint)
        print(f"L-BFGS-B: {n_iter} iterations, {result.nfev} evaluations, loss = {result.fun:.8f}; "
              f"{result.message}")
    np.copyto(net.params, result.x, casting="same_kind")
    return n_iter, float(result.fun)
