"""Checkpoints: a saved network plus what training needs to resume exactly.

``fb.save(net, path, optimizer=opt, epoch=k)`` (or ``net.save(path, optimizer=opt)``)
writes the usual model file (see ``fastbp.serialization``) with, in addition:

* metadata key ``"training"``: ``{"format": "fastbp.TrainingState", "version": 1,
  "optimizer": {"type": "Adam", "config": {hyperparameters, base lr}, "counters":
  {"step": ...}}, "epoch": epochs done or null, "rng": the state of the network's
  random Generator (the one ``fit`` shuffles with)}``;
* one array ``optimizer.<name>`` per buffer of the optimizer's state
  (``velocity``, ``square_avg``, ``exp_avg``, ``exp_avg_sq``), shape (n_params,),
  in the network's dtype.

``fb.load_checkpoint(path)`` gives back the network, an optimizer built on it
with that state, and the epoch count; ``net.fit(..., optimizer=opt,
initial_epoch=epoch)`` then continues bit for bit as if training had never
stopped. ``fb.load`` reads a checkpoint as a plain model (the training state
is ignored), and ``load_checkpoint`` refuses a file saved without an optimizer.
"""

import dataclasses
from collections import namedtuple

import numpy as np

from .optim import SGD, Adam, Optimizer, RMSprop

__all__ = ["Checkpoint", "load_checkpoint"]

FORMAT = "fastbp.TrainingState"
VERSION = 1
ARRAY_PREFIX = "optimizer."

# One row per optimizer a checkpoint can hold: the name stored, the class rebuilt.
OPTIMIZERS = {cls.__name__: cls for cls in (SGD, RMSprop, Adam)}
# Bit generators whose state is plain data (ints, and MT19937's key array as a list).
BIT_GENERATORS = {name: getattr(np.random, name) for name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")}

Checkpoint = namedtuple("Checkpoint", ["network", "optimizer", "epoch"])
Checkpoint.__doc__ = """What ``load_checkpoint`` returns: (network, optimizer, epoch).

network : Network
    Weights and the shuffling Generator's state as saved.
optimizer : SGD, RMSprop or Adam
    Built on ``network``, with the saved hyperparameters (base learning rate)
    and state (moments, velocity, step count).
epoch : int or None
    Epochs done when saved (what ``fit``'s ``initial_epoch`` takes), None if not recorded.
"""


def training_state(network, optimizer, epoch):
    """(metadata dict, {member name: array}) of ``optimizer``'s state, for ``save``; validates first."""
    if not isinstance(optimizer, Optimizer) or type(optimizer).__name__ not in OPTIMIZERS:
        raise TypeError(f"optimizer must be one of fastbp's {', '.join(OPTIMIZERS)}, got {type(optimizer).__name__}")
    if optimizer.params is not network.params:
        raise ValueError("the optimizer was built on other parameters than this network's")
    if epoch is not None and (isinstance(epoch, (bool, np.bool_)) or not hasattr(epoch, "__index__")
                              or int(epoch) < 0):
        raise ValueError(f"epoch must be an integer >= 0 or None, got {epoch!r}")
    counters, arrays = {}, {}
    for field in dataclasses.fields(optimizer.state):
        value = getattr(optimizer.state, field.name)
        if isinstance(value, np.ndarray):
            arrays[ARRAY_PREFIX + field.name] = value
        else:
            counters[field.name] = int(value)
    bit_generator = network._rng.bit_generator
    metadata = {"format": FORMAT, "version": VERSION,
                "optimizer": {"type": type(optimizer).__name__, "config": optimizer.get_config(),
                              "counters": counters},
                "epoch": None if epoch is None else int(epoch),
                "rng": _plain(bit_generator.state) if type(bit_generator).__name__ in BIT_GENERATORS else None}
    return metadata, arrays


def _plain(value):
    """``value`` with arrays as lists and NumPy scalars as Python numbers: JSON-serialisable."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_training_state(network, metadata, members, read_array):
    """Restore the training state of a checkpoint into ``network``; (optimizer, epoch), or None if none.

    ``members`` names the file's arrays; ``read_array(name, shape, dtype)`` reads one
    after checking its header against that shape and dtype (``fastbp.serialization``'s
    checks, so a member that would expand past the parameters is refused unread).

    Raises ValueError (or TypeError/KeyError, which ``load`` reports as ValueError)
    if the state does not fit the network or is malformed. Allocates only the
    optimizer's buffers, each the size of the parameters already loaded.
    """
    training = metadata.get("training")
    if training is None:
        return None
    if not isinstance(training, dict) or training.get("format") != FORMAT:
        raise ValueError(f"its training state is not of format {FORMAT!r}")
    if training.get("version") != VERSION:
        raise ValueError(f"its training state has version {training.get('version')!r}; this fastbp reads {VERSION}")
    record = training["optimizer"]
    cls = OPTIMIZERS.get(record["type"]) if isinstance(record.get("type"), str) else None
    if cls is None:
        raise ValueError(f"unknown optimizer type {record.get('type')!r}; known: {', '.join(OPTIMIZERS)}")
    config, counters = record["config"], record["counters"]
    if not isinstance(config, dict) or not isinstance(counters, dict):
        raise ValueError("its optimizer record is malformed")
    optimizer = cls(network, **config)  # validates the hyperparameters
    fields = {field.name for field in dataclasses.fields(optimizer.state)}
    stored = set(counters) | {name[len(ARRAY_PREFIX):] for name in members if name.startswith(ARRAY_PREFIX)}
    if stored != fields:
        raise ValueError(f"its {cls.__name__} state holds {sorted(stored)}, expected {sorted(fields)}")
    for name in sorted(fields):
        current = getattr(optimizer.state, name)
        if isinstance(current, np.ndarray):
            current[...] = read_array(ARRAY_PREFIX + name, current.shape, current.dtype)
        else:
            value = counters[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"optimizer counter {name!r} must be an integer >= 0, got {value!r}")
            setattr(optimizer.state, name, value)
    epoch = training.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise ValueError(f"its epoch must be an integer >= 0 or null, got {epoch!r}")
    if training.get("rng") is not None:
        network._rng = np.random.Generator(_bit_generator(training["rng"]))
    return optimizer, epoch


def _bit_generator(state):
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in BIT_GENERATORS:
        raise ValueError(f"its random generator state names {name!r}; known: {', '.join(BIT_GENERATORS)}")
    bit_generator = BIT_GENERATORS[name]()
    bit_generator.state = state  # ValueError/TypeError/KeyError if malformed
    return bit_generator


def load_checkpoint(path):
    """Load a checkpoint saved with an optimizer: the network, its optimizer, and the epoch count.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``fb.save(net, path, optimizer=opt)``,
        ``net.save(path, optimizer=opt)`` or ``fb.ModelCheckpoint``.

    Returns
    -------
    Checkpoint
        The named tuple ``(network, optimizer, epoch)``. Resume with
        ``network.fit(X, y, optimizer=optimizer, initial_epoch=epoch or 0, ...)``
        and the same other arguments (schedule, batch size, shuffle): the
        weights then follow, bit for bit, those of a run that never stopped.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a valid fastbp model file, its training state is
        malformed or does not fit the network, or it holds no optimizer state
        (saved without ``optimizer=``; ``fb.load`` reads such a file).
    """
    from .serialization import read

    network, training = read(path, training=True)
    if training is None:
        raise ValueError(f"{str(path)!r} holds a model but no optimizer state (it was saved without "
                         "optimizer=); load it with fb.load, or save with net.save(path, optimizer=opt)")
    optimizer, epoch = training
    return Checkpoint(network, optimizer, epoch)
