"""Learning-rate schedules: callables ``schedule(epoch, base_lr) -> lr``.

``Network.fit(..., lr_schedule=schedule)`` calls the schedule at the start of
every epoch (``epoch`` counts from 0) with the optimizer's learning rate at the
start of ``fit`` as ``base_lr``, and sets ``optimizer.lr`` to the result; the
learning rate used is recorded in ``history["lr"]``, and ``optimizer.lr`` is
set back to ``base_lr`` when ``fit`` returns. Any function of that signature
is a schedule too.
"""

import math

__all__ = ["StepDecay", "CosineDecay", "ExponentialDecay"]


def _positive_int(name, value):
    if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _rate(name, value, upper=None):
    value = float(value)
    if not math.isfinite(value) or value < 0 or (upper is not None and value > upper):
        raise ValueError(f"Invalid {name}: {value}")
    return value


class StepDecay:
    """``lr = base_lr · gamma^(epoch // step_size)`` (torch.optim.lr_scheduler.StepLR).

    Parameters
    ----------
    step_size : int >= 1
        Epochs between decays.
    gamma : float in [0, 1]
        Multiplicative factor per decay.
    """

    def __init__(self, step_size, gamma=0.1):
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = _rate("gamma", gamma, upper=1.0)

    def __call__(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)

    def __repr__(self):
        return f"StepDecay(step_size={self.step_size}, gamma={self.gamma})"


class CosineDecay:
    """``lr = eta_min + (base_lr - eta_min)·(1 + cos(π·min(epoch, T_max)/T_max))/2``.

    torch.optim.lr_scheduler.CosineAnnealingLR's curve over the first ``T_max``
    epochs, then held at ``eta_min`` (no restart).

    Parameters
    ----------
    T_max : int >= 1
        Epochs from ``base_lr`` down to ``eta_min``.
    eta_min : float >= 0
    """

    def __init__(self, T_max, eta_min=0.0):
        self.T_max = _positive_int("T_max", T_max)
        self.eta_min = _rate("eta_min", eta_min)

    def __call__(self, epoch, base_lr):
        t = min(epoch, self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2

    def __repr__(self):
        return f"CosineDecay(T_max={self.T_max}, eta_min={self.eta_min})"


class ExponentialDecay:
    """``lr = base_lr · gamma^epoch`` (torch.optim.lr_scheduler.ExponentialLR).

    Parameters
    ----------
    gamma : float in [0, 1]
    """

    def __init__(self, gamma):
        self.gamma = _rate("gamma", gamma, upper=1.0)

    def __call__(self, epoch, base_lr):
        return base_lr * self.gamma ** epoch

    def __repr__(self):
        return f"ExponentialDecay(gamma={self.gamma})"
