"""A network's per-batch-shape buffers: each layer's workspace, made once per input shape.

A layer's workspace (``Layer.workspace``) holds its output ``a``, its
``delta`` (d loss/d a, turned into d loss/d z in place) and what its forward
keeps for backward (z for gelu, the states of a recurrent layer). ``fit``
uses at most two batch shapes (the batch and the last, smaller one), so after
the first batch of each a training step allocates nothing.
"""

from collections import OrderedDict

from .layers.dense import stack_workspaces

MAX_WORKSPACES = 6  # batch shapes kept: fit needs 2 for training and 2 for validation


class Workspace:
    """The buffers of every layer for input batches of one shape.

    For a stack of Dense layers (``stack`` given: ``mlp_loss_and_grad``'s widths
    and activation ids) the layers' buffers are views into the three flat
    buffers that kernel takes (``flat``), so the whole-network kernel and the
    layer-by-layer passes share them.
    """

    def __init__(self, layers, input_shape, dtype, stack=None):
        self.input_shape = tuple(input_shape)
        self.flat = None  # (outputs, preactivations, deltas) for mlp_loss_and_grad
        if stack is not None:
            self.flat, self.layers = stack_workspaces(layers, input_shape[0], dtype, *stack)
        else:
            self.layers, shape = [], self.input_shape
            for layer in layers:
                self.layers.append(layer.workspace(shape, dtype))
                shape = self.layers[-1].output.shape

    @property
    def activations(self):
        """Each layer's output buffer, in layer order."""
        return [ws.output for ws in self.layers]

    @property
    def deltas(self):
        """Each layer's delta buffer, in layer order."""
        return [ws.delta for ws in self.layers]

    @property
    def output(self):
        return self.layers[-1].output

    @property
    def delta(self):
        return self.layers[-1].delta


class WorkspaceCache:
    """Workspaces by input shape, least recently used evicted beyond ``MAX_WORKSPACES``."""

    def __init__(self):
        self._by_shape = OrderedDict()

    def get(self, layers, input_shape, dtype, stack=None):
        """The workspace for batches of ``input_shape``: made once, then reused."""
        key = tuple(input_shape)
        ws = self._by_shape.get(key)
        if ws is None:
            if len(self._by_shape) >= MAX_WORKSPACES:
                self._by_shape.popitem(last=False)
            ws = self._by_shape[key] = Workspace(layers, key, dtype, stack)
        else:
            self._by_shape.move_to_end(key)
        return ws

    def holds(self, ws):
        """Whether ``ws`` is still the cached workspace of its shape (not evicted)."""
        return self._by_shape.get(ws.input_shape) is ws

    def items(self):
        return self._by_shape.items()

    def __getitem__(self, key):
        return self._by_shape[key]
