"""What every layer that runs over a sequence shares (RNN, LSTM, GRU): its
shapes, ``return_sequences``, truncation, and the two directions of
``bidirectional=True``.

Design: a subclass declares the parameters of one direction
(``_direction_shapes``), the caches its kernels keep (``_direction_cache``)
and one pass of one direction over a C-contiguous (batch, T, n_in) sequence
(``_run_forward``/``_run_backward``, one kernel call each, never a Python loop
over steps). This module does the rest with whole-array copies:

* parameters: one set per direction, the reverse one named with the suffix
  ``_reverse`` (torch's ``weight_ih_l0_reverse``), forward first;
* the reverse direction runs the same kernels on the time-reversed copy of x;
  its states are reversed back, so ``output[..., :H]`` is the forward and
  ``output[..., H:]`` the reverse direction at the same step, as
  ``torch.nn.LSTM(bidirectional=True)``'s output;
* ``return_sequences=False`` outputs each direction's final state: the forward
  state after the last step and the reverse state after the first step, i.e.
  ``torch``'s ``h_n`` of both directions (``out[:, -1, :H]`` and ``out[:, 0, H:]``
  of the sequence output);
* truncation (``truncate=k``) applies to each direction in its own time order:
  the reverse direction backpropagates through its last k steps, which are the
  first k steps of the sequence.
"""

import numpy as np

from .base import Layer, LayerWorkspace, check_size

DIRECTIONS = ("", "_reverse")  # parameter name suffix of each direction


class DirectionCache:
    """One direction's buffers: states ``hs`` and their gradient ``grad_hs`` (batch, T, H), and the kernel's caches."""

    def __init__(self, **buffers):
        self.__dict__.update(buffers)


class SequenceLayer(Layer):
    """Base of the recurrent layers over sequences: input (n_samples, n_steps, n_in)."""

    _kind = "Sequence"
    sequence_input = True
    input_rank = 3
    #: Whether ``_run_backward`` needs a dx buffer even for the first layer (the gated kernels always write dx).
    _always_dx = False

    def __init__(self, n_in, n_hidden, return_sequences, truncate, bidirectional):
        self.n_in = check_size(self._kind, "n_in", n_in)
        self.n_hidden = check_size(self._kind, "n_hidden", n_hidden)
        self.return_sequences = bool(return_sequences)
        self.truncate = None if truncate is None else check_size(self._kind, "truncate", truncate)
        self.bidirectional = bool(bidirectional)

    # ------------------------------------------------------------ declared by each subclass
    def _direction_shapes(self):
        """[(name, shape)] of one direction's parameters."""
        raise NotImplementedError

    def _direction_cache(self, n_samples, n_steps, dtype):
        """A DirectionCache for one direction (``hs`` and ``grad_hs`` are given by the caller)."""
        return {}

    def _run_forward(self, backend, n_threads, x, suffix, cache):
        raise NotImplementedError

    def _run_backward(self, backend, n_threads, x, suffix, cache, dx):
        """Gradients of one direction from ``cache.grad_hs`` (may be overwritten); dx (batch, T, n_in) or None."""
        raise NotImplementedError

    # ------------------------------------------------------------ shapes
    @property
    def n_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def n_out(self):
        return self.n_directions * self.n_hidden

    def output_is_sequence(self, input_is_sequence):
        return self.return_sequences

    def parameter_shapes(self):
        return [(name + suffix, shape) for suffix in DIRECTIONS[:self.n_directions]
                for name, shape in self._direction_shapes()]

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[2] != self.n_in or 0 in input_shape[:2]:
            raise ValueError(f"{self!r} takes sequences of shape (n_samples, n_steps, {self.n_in}) with "
                             f"n_samples, n_steps >= 1, got {tuple(input_shape)}")
        n_samples, n_steps, _ = input_shape
        return (n_samples, n_steps, self.n_out) if self.return_sequences else (n_samples, self.n_out)

    def _truncation(self, n_steps):
        return n_steps if self.truncate is None else min(self.truncate, n_steps)

    def _config(self):
        """The arguments this base holds, for ``get_config``."""
        return {"n_in": self.n_in, "n_hidden": self.n_hidden, "return_sequences": self.return_sequences,
                "truncate": self.truncate, "bidirectional": self.bidirectional}

    def __repr__(self):
        """``Kind(n_in, n_hidden, ...)`` with the arguments that differ from their defaults."""
        extra = "".join(f", {key}={value!r}" for key, value in self.get_config().items()
                        if key not in ("type", "n_in", "n_hidden", "init") and value not in (False, None))
        return f"{type(self).__name__}({self.n_in}, {self.n_hidden}{extra})"

    # ------------------------------------------------------------ buffers
    def workspace(self, input_shape, dtype):
        """output, delta, and per direction its states, their gradient and the kernel's caches.

        A single direction with return_sequences uses output and delta as its
        states and their gradient (no copies); otherwise the layer copies
        between them (and keeps a time-reversed copy of x for the reverse one).
        """
        output = np.empty(self.output_shape(input_shape), dtype)
        delta = np.empty_like(output)
        m, n_steps, _ = input_shape
        shape = (m, n_steps, self.n_hidden)
        directions = []
        for d in range(self.n_directions):
            if self.return_sequences and not self.bidirectional:
                hs, grad_hs = output, delta
            else:
                hs, grad_hs = np.empty(shape, dtype), np.empty(shape, dtype)
            directions.append(DirectionCache(hs=hs, grad_hs=grad_hs,
                                             **self._direction_cache(m, n_steps, dtype)))
        reversed_x = np.empty(input_shape, dtype) if self.bidirectional else None
        needs_dx = self.bidirectional or self._always_dx
        return LayerWorkspace(output, delta, directions=directions, reversed_x=reversed_x,
                              dx=np.empty(input_shape, dtype) if needs_dx else None)

    # ------------------------------------------------------------ forward / backward
    def _inputs(self, x, ws):
        """x for each direction: x itself, then its time-reversed copy (made by forward)."""
        return (x, ws.reversed_x)[:self.n_directions]

    def forward(self, backend, n_threads, x, ws):
        """Each direction's states over x (batch, T, n_in); output := states (batch, T, n_out) or final states."""
        if self.bidirectional:
            np.copyto(ws.reversed_x, x[:, ::-1])
        for suffix, cache, x_d in zip(DIRECTIONS, ws.directions, self._inputs(x, ws)):
            self._run_forward(backend, n_threads, x_d, suffix, cache)
        if self.return_sequences and not self.bidirectional:
            return  # the states are the output
        n = self.n_hidden
        for d, cache in enumerate(ws.directions):
            hs = cache.hs if d == 0 else cache.hs[:, ::-1]  # back to the sequence's time order
            if self.return_sequences:
                np.copyto(ws.output[..., d * n:(d + 1) * n], hs)
            else:
                np.copyto(ws.output[:, d * n:(d + 1) * n], cache.hs[:, -1])  # state after its last step

    def backward(self, backend, n_threads, x, ws, dx):
        """Each direction's BPTT from ws.delta; dx := sum of the directions' input gradients (or None)."""
        n = self.n_hidden
        for d, cache in enumerate(ws.directions):
            if self.return_sequences and not self.bidirectional:
                break  # grad_hs is ws.delta
            if self.return_sequences:
                grad = ws.delta[..., d * n:(d + 1) * n]
                np.copyto(cache.grad_hs, grad if d == 0 else grad[:, ::-1])
            else:  # only each direction's final state reaches the loss
                cache.grad_hs[:, :-1] = 0
                cache.grad_hs[:, -1] = ws.delta[:, d * n:(d + 1) * n]
        scratch_dx = ws.dx if dx is not None or self._always_dx else None
        for d in range(self.n_directions - 1, -1, -1):  # the reverse direction first: its dx goes to scratch
            dx_d = scratch_dx if d == 1 or dx is None else dx
            self._run_backward(backend, n_threads, self._inputs(x, ws)[d], DIRECTIONS[d], ws.directions[d], dx_d)
        if self.bidirectional and dx is not None:
            dx += ws.dx[:, ::-1]  # the reverse direction's input gradient, back in the sequence's time order
