"""Optimizers: trajectories against a NumPy transcription of torch.optim's rules, and torch.optim itself."""

import numpy as np
import pytest

import fastbp as fb

from conftest import eps

N_PARAMS, N_STEPS = 37, 6


class Flat:
    """The smallest thing an optimizer accepts: ``.parameters()`` -> (params, grads)."""

    def __init__(self, params):
        self.params = params.copy()
        self.grads = np.zeros_like(params)

    def parameters(self):
        return self.params, self.grads


def gradient_sequence(dtype):
    rng = np.random.default_rng(11)
    return [rng.standard_normal(N_PARAMS).astype(dtype) for _ in range(N_STEPS)]


def start(dtype):
    return np.random.default_rng(10).standard_normal(N_PARAMS).astype(dtype)


# A line-by-line transcription of torch/optim/{sgd,rmsprop,adam}.py (single tensor, foreach=False).
def torch_rules_sgd(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    p, buf, out = p.astype(np.float64), None, []
    for g in grads:
        g = g.astype(np.float64)
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g  # dampening 0
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
        out.append(p)
    return out


def torch_rules_rmsprop(p, grads, lr, alpha, eps_, weight_decay=0.0):
    p, square_avg, out = p.astype(np.float64), np.zeros(p.shape), []
    for g in grads:
        g = g.astype(np.float64)
        if weight_decay:
            g = g + weight_decay * p
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        p = p - lr * g / (np.sqrt(square_avg) + eps_)
        out.append(p)
    return out


def torch_rules_adam(p, grads, lr, beta1, beta2, eps_, weight_decay=0.0):
    p, m, v, out = p.astype(np.float64), np.zeros(p.shape), np.zeros(p.shape), []
    for step, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if weight_decay:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
        denom = np.sqrt(v) / np.sqrt(bias_correction2) + eps_
        p = p - lr / bias_correction1 * m / denom
        out.append(p)
    return out


CASES = [
    ("sgd", dict(lr=0.1), dict(lr=0.1)),
    ("sgd_momentum", dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9)),
    ("sgd_nesterov_wd", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
     dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("rmsprop", dict(lr=0.01, rho=0.9, eps=1e-8), dict(lr=0.01, alpha=0.9, eps_=1e-8)),
    ("rmsprop_wd", dict(lr=0.01, rho=0.99, eps=1e-6, weight_decay=0.1),
     dict(lr=0.01, alpha=0.99, eps_=1e-6, weight_decay=0.1)),
    ("adam", dict(lr=1e-3), dict(lr=1e-3, beta1=0.9, beta2=0.999, eps_=1e-8)),
    ("adam_wd", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
     dict(lr=0.01, beta1=0.8, beta2=0.99, eps_=1e-6, weight_decay=0.05)),
]
OPTIMIZERS = {"sgd": fb.SGD, "rmsprop": fb.RMSprop, "adam": fb.Adam}
RULES = {"sgd": torch_rules_sgd, "rmsprop": torch_rules_rmsprop, "adam": torch_rules_adam}


def run(kind, kwargs, dtype):
    flat = Flat(start(dtype))
    optimizer = OPTIMIZERS[kind](flat, **kwargs)
    trajectory = []
    for g in gradient_sequence(dtype):
        flat.grads[...] = g
        optimizer.step()
        trajectory.append(flat.params.copy())
    return trajectory


@pytest.mark.parametrize("case,kwargs,rule_kwargs", CASES, ids=[c[0] for c in CASES])
def test_trajectory_matches_torch_rules(backend, dtype, case, kwargs, rule_kwargs):
    kind = case.split("_")[0]
    got = run(kind, kwargs, dtype)
    expected = RULES[kind](start(dtype), gradient_sequence(dtype), **rule_kwargs)
    for step, (p, q) in enumerate(zip(got, expected)):
        assert p.dtype == dtype
        np.testing.assert_allclose(p, q, rtol=50 * eps(dtype), atol=50 * eps(dtype), err_msg=f"step {step + 1}")


@pytest.mark.parametrize("case,kwargs,rule_kwargs", CASES, ids=[c[0] for c in CASES])
def test_trajectory_matches_torch_optim(backend, case, kwargs, rule_kwargs):
    torch = pytest.importorskip("torch")
    kind = case.split("_")[0]
    got = run(kind, kwargs, np.float64)
    param = torch.nn.Parameter(torch.tensor(start(np.float64)))
    torch_kwargs = dict(kwargs)
    if kind == "rmsprop":
        torch_kwargs["alpha"] = torch_kwargs.pop("rho")
    optimizer = {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam}[kind](
        [param], foreach=False, **torch_kwargs)
    for step, g in enumerate(gradient_sequence(np.float64)):
        param.grad = torch.tensor(g)
        optimizer.step()
        np.testing.assert_allclose(got[step], param.detach().numpy(), rtol=1e-13, atol=1e-14,
                                   err_msg=f"step {step + 1}")


def test_state_is_named_flat_buffers(backend):
    net = fb.Network([fb.Dense(3, 2)], loss="mse", dtype=np.float64)
    adam, sgd, rms = fb.Adam(net), fb.SGD(net, lr=0.1, momentum=0.9), fb.RMSprop(net)
    assert adam.state.step == 0 and adam.state.exp_avg.shape == adam.state.exp_avg_sq.shape == (8,)
    assert sgd.state.velocity.shape == rms.state.square_avg.shape == (8,)
    assert adam.params is net.params and adam.grads is net.grads
    net.forward(np.ones((2, 3)))
    net.backward(np.zeros((2, 2)))
    adam.step()
    assert adam.state.step == 1
    adam.zero_grad()
    assert not net.grads.any()


def test_one_kernel_call_per_step(backend, monkeypatch):
    """The update of every layer's parameters is one call over the flat vector."""
    net = fb.Network([fb.Dense(3, 4, "relu"), fb.Dense(4, 2)], loss="mse", dtype=np.float64)
    module = fb._backend.backend_module()
    calls = []
    real = module.adam_step
    monkeypatch.setattr(module, "adam_step", lambda *args: calls.append(args[0].size) or real(*args))
    net.fit(np.ones((5, 3)), np.zeros((5, 2)), optimizer=fb.Adam(net), epochs=2, batch_size=None, verbose=0)
    assert calls == [net.n_params] * 2


@pytest.mark.parametrize("make,message", [
    (lambda p: fb.SGD(p, lr=-0.1), "Invalid learning rate: -0.1"),
    (lambda p: fb.Adam(p, lr=float("nan")), "Invalid learning rate: nan"),
    (lambda p: fb.SGD(p, lr=0.1, momentum=-1), "Invalid momentum value: -1.0"),
    (lambda p: fb.SGD(p, lr=0.1, nesterov=True), "Nesterov momentum requires a momentum"),
    (lambda p: fb.SGD(p, lr=0.1, weight_decay=-1e-4), "Invalid weight_decay value"),
    (lambda p: fb.RMSprop(p, rho=1.0), "Invalid rho value: 1.0"),
    (lambda p: fb.RMSprop(p, eps=-1.0), "Invalid epsilon value"),
    (lambda p: fb.Adam(p, betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (lambda p: fb.Adam(p, betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (lambda p: fb.Adam(p, clip_norm=0.0), "Invalid clip_norm value"),
    (lambda p: fb.Adam(p, clip_value=-1.0), "Invalid clip_value value"),
])
def test_bad_hyperparameters(make, message):
    with pytest.raises(ValueError, match=message):
        make(Flat(np.zeros(3)))


def test_bad_parameters_and_lr_setter():
    with pytest.raises(TypeError, match="an optimizer needs a Network"):
        fb.Adam(42)
    with pytest.raises(ValueError, match="must match params"):
        fb.Adam((np.zeros(3), np.zeros(4)))
    with pytest.raises(TypeError, match="Invalid learning rate"):
        fb.Adam(Flat(np.zeros(3)), lr="0.1")
    opt = fb.SGD(Flat(np.zeros(3)), lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate: -1.0"):
        opt.lr = -1
    assert opt.lr == 0.1


def test_clipping(backend):
    flat = Flat(np.zeros(4))
    opt = fb.SGD(flat, lr=1.0, clip_value=0.5)
    flat.grads[...] = [3.0, -0.2, -4.0, 0.1]
    opt.step()
    np.testing.assert_array_equal(flat.params, [-0.5, 0.2, 0.5, -0.1])
    flat = Flat(np.zeros(2))
    opt = fb.SGD(flat, lr=1.0, clip_norm=1.0)
    flat.grads[...] = [3.0, 4.0]  # norm 5 -> rescaled to norm 1 (torch: max_norm / (norm + 1e-6))
    opt.step()
    np.testing.assert_allclose(flat.params, [-0.6, -0.8], rtol=1e-6)
    flat.grads[...] = [0.3, 0.4]  # below the norm: untouched
    opt.step()
    np.testing.assert_allclose(flat.params, [-0.9, -1.2], rtol=1e-6)


def test_clip_norm_matches_torch(backend):
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(0).standard_normal(10) * 5
    flat = Flat(np.zeros(10))
    flat.grads[...] = g
    fb.optim.clip_grads(flat.grads, clip_norm=2.0)
    t = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))
    t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_([t], 2.0)
    np.testing.assert_allclose(flat.grads, t.grad.numpy(), rtol=1e-14)


# ---------------------------------------------------------------- all_finite (the training step's checks)
@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("size", [0, 1, 7, 16384, 16385, 600_001])
def test_all_finite_kernel(backend, dtype, size, n_threads):
    from fastbp._backend import backend_module
    from fastbp._kernels import reference

    kernels = backend_module()
    x = np.random.default_rng(size).standard_normal(size).astype(dtype)
    x[::5] *= np.finfo(dtype).max / 8  # huge but finite values, and subnormals and zeros
    if size > 2:
        x[1] = np.finfo(dtype).tiny / 4
        x[2] = -0.0
    assert kernels.all_finite(x, n_threads) is True
    for bad in (np.nan, np.inf, -np.inf):
        for at in sorted({0, size // 2, size - 1}) if size else []:
            y = x.copy()
            y[at] = bad
            assert kernels.all_finite(y, n_threads) is False
            assert reference.all_finite(y, n_threads) is False
    assert reference.all_finite(x, n_threads) is True


# ------------------------------------------------------------ checked steps
def step_kernel(kind, kernels, n_threads, param, grad, state, **hyper):
    """One checked step of ``kind`` through the kernel module (backend or reference)."""
    if kind == "sgd":
        return kernels.sgd_step(param, grad, state[0], hyper.get("lr", 0.1), hyper.get("momentum", 0.9),
                                True, hyper.get("weight_decay", 0.01), n_threads)
    if kind == "rmsprop":
        return kernels.rmsprop_step(param, grad, state[0], hyper.get("lr", 0.1), 0.9, 1e-8,
                                    hyper.get("weight_decay", 0.01), n_threads)
    return kernels.adam_step(param, grad, state[0], state[1], hyper.get("lr", 0.1), 0.9, 0.999, 1e-8,
                             hyper.get("weight_decay", 0.01), 3, n_threads)


@pytest.mark.parametrize("kind", ["sgd", "rmsprop", "adam"])
@pytest.mark.parametrize("size", [1, 7, 70_001])
def test_a_non_finite_step_writes_nothing(backend, dtype, kind, size):
    """NaN/inf in the gradient (first, middle, last element) or an overflowing update:
    the kernel returns False and every buffer keeps its bits; else it matches the reference."""
    from fastbp._backend import backend_module
    from fastbp._kernels import reference

    rng = np.random.default_rng(size)
    param = rng.standard_normal(size).astype(dtype)
    state = [np.abs(rng.standard_normal(size)).astype(dtype) for _ in range(2)]
    grad = rng.standard_normal(size).astype(dtype)
    for n_threads in (1, 2):
        bad_inputs = []
        for at in sorted({0, size // 2, size - 1}):
            for value in (np.nan, np.inf, -np.inf):
                g = grad.copy()
                g[at] = value
                bad_inputs.append((param, g))
        huge = param.copy()
        huge[size // 2] = np.finfo(dtype).max  # finite, but the update overflows
        g = grad.copy()
        g[size // 2] = -np.finfo(dtype).max
        bad_inputs.append((huge, g))
        for p0, g in bad_inputs:
            p, s = p0.copy(), [buf.copy() for buf in state]
            assert step_kernel(kind, backend_module(), n_threads, p, g, s, lr=2.0) is False
            np.testing.assert_array_equal(p, p0)
            for got, before in zip(s, state):
                np.testing.assert_array_equal(got, before)
        p, s = param.copy(), [buf.copy() for buf in state]
        expected_p, expected_s = param.copy(), [buf.copy() for buf in state]
        assert step_kernel(kind, backend_module(), n_threads, p, grad, s) is True
        assert step_kernel(kind, reference, n_threads, expected_p, grad, expected_s) is True
        np.testing.assert_allclose(p, expected_p, rtol=8 * eps(dtype), atol=8 * eps(dtype))


def test_optimizer_step_raises_and_changes_nothing(backend):
    flat = Flat(start(np.float32))
    opt = fb.Adam(flat, lr=0.1)
    flat.grads[...] = 1.0
    opt.step()
    before = flat.params.copy(), opt.state.exp_avg.copy(), opt.state.exp_avg_sq.copy(), opt.state.step
    flat.grads[5] = np.nan
    with pytest.raises(FloatingPointError, match="left unchanged"):
        opt.step()
    np.testing.assert_array_equal(flat.params, before[0])
    np.testing.assert_array_equal(opt.state.exp_avg, before[1])
    np.testing.assert_array_equal(opt.state.exp_avg_sq, before[2])
    assert opt.state.step == before[3] == 1


# ---------------------------------------------------------------- issue 12: exploding gradients, aliased buffers
HUGE = {np.float32: 1.0, np.float64: 1e140}  # times 1e20: the sum of squares overflows, the norm does not


def test_clip_norm_scales_when_the_squared_norm_overflows(dtype):
    g = (np.array([1e20, -3e20, 2e19]) * HUGE[dtype.type]).astype(dtype)
    assert not np.isfinite(np.einsum("i,i->", g, g))  # the naive norm overflows
    unit = 1e20 * HUGE[dtype.type]
    expected_norm = float(np.linalg.norm(g.astype(np.float64) / unit)) * unit
    grads = g.copy()
    norm = fb.optim.clip_grads(grads, clip_norm=1.0)
    assert norm == pytest.approx(expected_norm, rel=10 * eps(dtype))
    np.testing.assert_allclose(grads, g.astype(np.float64) / expected_norm, rtol=10 * eps(dtype))
    assert np.linalg.norm(grads.astype(np.float64)) == pytest.approx(1.0, rel=10 * eps(dtype))


def test_clip_norm_keeps_its_bits_when_the_factor_is_subnormal_in_float32():
    grads = np.array([3e38, -3e38, 1e38], np.float32)  # norm 4.4e38 > float32's max: factor < its tiny
    fb.optim.clip_grads(grads, clip_norm=1.0)
    exact = np.array([3, -3, 1]) / np.sqrt(19.0)
    np.testing.assert_allclose(grads, exact, rtol=4 * eps(np.float32))


def test_sgd_step_with_clip_norm_on_an_exploding_gradient(backend, dtype):
    flat = Flat(np.zeros(3, dtype))
    opt = fb.SGD(flat, lr=0.1, clip_norm=1.0)
    flat.grads[...] = np.array([1e20, -3e20, 2e19]) * HUGE[dtype.type]
    opt.step()
    moved = np.linalg.norm(flat.params.astype(np.float64))
    assert moved == pytest.approx(0.1, rel=10 * eps(dtype))  # was 0: the gradient had been zeroed
    np.testing.assert_allclose(flat.params, -0.1 * np.array([1, -3, 0.2]) / np.sqrt(10.04), rtol=10 * eps(dtype))


def _step(kind, param, grad, a, b):
    if kind == "sgd":
        return fb.kernels.sgd_step(param, grad, a, lr=0.1, momentum=0.9)
    if kind == "rmsprop":
        return fb.kernels.rmsprop_step(param, grad, a, lr=0.1)
    return fb.kernels.adam_step(param, grad, a, b, 1, lr=0.1)


@pytest.mark.parametrize("kind", ["sgd", "rmsprop", "adam"])
def test_optimizer_steps_refuse_overlapping_buffers(backend, kind):
    base = np.arange(1.0, 21.0)
    grad = np.full(8, 0.5)
    cases = [  # (param, grad, state a, state b, the two names the message names)
        (base[:8], grad, np.zeros(8), np.zeros(8), None),
        (base[:8], base[:8], np.zeros(8), np.zeros(8), "grad"),
        (base[:8], base[4:12], np.zeros(8), np.zeros(8), "grad"),
        (base[:8], grad, base[:8], np.zeros(8), "param"),
        (base[:8], grad, base[6:14], np.zeros(8), "param"),
        (base[:8], grad, grad, np.zeros(8), "grad"),
    ]
    if kind == "adam":
        moments = np.zeros(12)
        cases += [(base[:8], grad, moments[:8], moments[:8], "exp_avg"),
                  (base[:8], grad, moments[:8], moments[4:], "exp_avg")]
    for param, g, a, b, culprit in cases[1:]:
        before = base.copy(), moments.copy() if kind == "adam" else None
        with pytest.raises(ValueError, match=f"must not overlap the inputs, but it overlaps {culprit}$"):
            _step(kind, param, g, a, b)
        np.testing.assert_array_equal(base, before[0])  # refused before anything was written
        if kind == "adam":
            np.testing.assert_array_equal(moments, before[1])
    param, g, a, b, _ = cases[0]
    assert _step(kind, param.copy(), g, a, b)


def test_adam_step_bad_hyperparameters_are_refused_alike(backend):
    def step(**kwargs):
        args = dict(step=1, lr=0.1)
        args.update(kwargs)
        return fb.kernels.adam_step(np.ones(4), np.ones(4), np.zeros(4), np.zeros(4), **args)

    for kwargs, message in [
        (dict(beta1=1.0), r"beta1 must lie in \[0, 1\), got 1.0"),
        (dict(beta2=1.0), r"beta2 must lie in \[0, 1\), got 1.0"),
        (dict(beta1=-0.1), r"beta1 must lie in \[0, 1\)"),
        (dict(step=2**70), r"step must be an integer in \[1, 2\*\*63 - 1\], got 1180591620717411303424"),
        (dict(step=2**63), r"step must be an integer in \[1, 2\*\*63 - 1\]"),
        (dict(step=0), r"step must be an integer in \[1, 2\*\*63 - 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            step(**kwargs)
    assert step(step=2**63 - 1)  # the largest step the kernels take: bias corrections of 1


def test_adam_step_at_the_largest_step_agrees_across_backends():
    results = []
    for name in fb.available_backends():
        with fb.backend(name):
            param = np.linspace(-1, 1, 9)
            assert fb.kernels.adam_step(param, np.full(9, 0.25), np.zeros(9), np.zeros(9), 2**63 - 1, lr=0.01)
            results.append(param)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
