"""Saving and loading networks: one ``.npz`` holding the weights and a JSON
description of the architecture and dtype; no pickle anywhere.

File layout (an uncompressed NumPy ``.npz`` archive):

* ``metadata``: a 0-d unicode array holding JSON:
  ``{"format": "fastbp.Network", "version": 1, "loss": ..., "dtype": ...,
  "seed": ..., "layers": [{"type": "Dense", "n_in": ..., "n_out": ...,
  "activation": ..., "init": ...}, ...]}``; an ``RNN`` or ``FixedPoint`` layer
  stores its constructor arguments the same way (``"type": "RNN"``, ...).
* ``layers.<i>.W`` (n_in, n_out) and ``layers.<i>.b`` (n_out,) for each Dense
  layer, ``layers.<i>.Wx``, ``.Wh``, ``.b`` for a recurrent one, in the
  network's dtype.

With ``optimizer=``, the file is also a checkpoint: the optimizer's state,
the epoch count and the shuffling Generator's state are added under the
metadata key ``"training"`` and members ``optimizer.<name>`` (see
``fastbp.checkpoint``); ``load`` ignores them, ``load_checkpoint`` restores them.

Saving is atomic: the archive is written to a temporary file in the same
directory, flushed and fsynced, then moved over ``path`` with ``os.replace``
(and the directory fsynced), so a crash mid-save leaves the previous file, if
any, intact.
"""

import json
import os
import tempfile
import zipfile

import numpy as np

from . import checkpoint as _checkpoint

__all__ = ["save", "load"]

FORMAT = "fastbp.Network"
VERSION = 1


def save(network, path, optimizer=None, epoch=None):
    """Save ``network``'s architecture, dtype and weights to ``path``, atomically.

    Parameters
    ----------
    network : Network
    path : str or os.PathLike
        Written exactly as given (no suffix is added); ``.npz`` is customary.
    optimizer : SGD, RMSprop or Adam built on ``network``, optional
        Also save its hyperparameters and state, and the network's random
        Generator: a checkpoint, read back by ``fastbp.load_checkpoint``.
    epoch : int >= 0, optional
        Epochs done, stored with the optimizer (``fit``'s ``initial_epoch`` on resuming).

    Returns
    -------
    path : str
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    metadata = dict(network.get_config(), format=FORMAT, version=VERSION)
    arrays = {}
    if optimizer is not None:
        metadata["training"], arrays = _checkpoint.training_state(network, optimizer, epoch)
    elif epoch is not None:
        raise ValueError("epoch is stored with the optimizer's state; pass optimizer= too")
    arrays["metadata"] = np.array(json.dumps(metadata))
    for name, param, _ in network.named_parameters():
        arrays[name] = param
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)
    return path


def _fsync_directory(directory):
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path):
    """Load a network saved by ``save``/``Network.save`` (or a checkpoint, as a plain model).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Network
        Same architecture, dtype and weights; its random Generator is freshly
        seeded with the saved seed.

    Raises
    ------
    FileNotFoundError (an OSError)
        If ``path`` does not exist.
    ValueError
        If the file is truncated, not an ``.npz`` archive, holds pickled data,
        or is not a fastbp model.
    """
    return read(path)[0]


def read(path, training=False):
    """``load``'s reader: (network, training) where training is ``(optimizer, epoch)`` from
    ``fastbp.checkpoint.read_training_state`` if asked and saved, else None."""
    from .layers import layer_from_config
    from .network import Network

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not an .npz archive")
            if "metadata" not in archive.files:
                raise ValueError("it has no fastbp metadata")
            metadata = json.loads(str(archive["metadata"][()]))
            if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
                raise ValueError(f"its metadata is not of format {FORMAT!r}")
            if metadata.get("version") != VERSION:
                raise ValueError(f"it has format version {metadata.get('version')!r}; this fastbp reads {VERSION}")
            layers = []
            for config in metadata["layers"]:
                layers.append(layer_from_config(config))  # ValueError for an unknown type
            network = Network(layers, loss=metadata["loss"], dtype=metadata["dtype"], seed=metadata.get("seed"))
            for name, param, _ in network.named_parameters():
                if name not in archive.files:
                    raise ValueError(f"it lacks the array {name!r}")
                stored = archive[name]
                if stored.shape != param.shape or stored.dtype != param.dtype:
                    raise ValueError(f"array {name!r} has shape {stored.shape} and dtype {stored.dtype}, "
                                     f"expected {param.shape} and {param.dtype}")
                param[...] = stored
            state = _checkpoint.read_training_state(network, metadata, archive) if training else None
    except (ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ValueError(f"{path!r} is not a valid fastbp model file: {exc}") from exc
    return network, state
