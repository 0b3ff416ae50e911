"""Atomic file writes, shared by ``fastbp.save`` and ``fastbp.onnx.export``.

The data is written to a temporary file in the same directory,
``.<name>.<8 random characters>.tmp``, flushed and fsynced, then moved over
``path`` with ``os.replace`` (and the directory fsynced), so a crash mid-write
leaves the previous file, if any, intact. A write holds a lock on its temporary
file (POSIX ``flock``) until it is renamed; the next write of the same path
deletes the unlocked ones, which killed writes left behind.
"""
import os
import re
import tempfile

try:
    import fcntl
except ImportError:  # Windows: an open file cannot be deleted there, so temporaries need no lock
    fcntl = None


def write_atomically(path, write):
    """Call ``write(f)`` on a binary file object, then move the file over ``path`` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(path)
    fd, tmp = _locked_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if fcntl is not None:  # renamed while still open and locked: no cleanup can take it
                os.replace(tmp, path)
        if fcntl is None:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


# ---------------------------------------------------------------- temporary files
def _temporary_pattern(path):
    """(directory, prefix, regex) of the temporary files that writes of ``path`` create."""
    directory, name = os.path.split(os.path.abspath(path))
    prefix = "." + name + "."
    return directory, prefix, re.compile(re.escape(prefix) + r"[A-Za-z0-9_]{8}\.tmp")  # mkstemp's 8 characters


def _locked_temporary(path):
    """A new temporary file beside ``path``, as (fd, name), locked until the fd is closed."""
    directory, prefix, _ = _temporary_pattern(path)
    while True:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, tmp
        except FileNotFoundError:
            pass
        # A concurrent write's cleanup took it for stale in the instant before the lock: make another.
        os.close(fd)


def _remove_stale_temporaries(path):
    """Delete the temporary files of killed writes of ``path`` (a live write holds a lock on its own)."""
    directory, _, pattern = _temporary_pattern(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in filter(pattern.fullmatch, names):
        stale = os.path.join(directory, name)
        try:
            fd = os.open(stale, os.O_RDONLY)
        except OSError:
            continue
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError while a write holds it
            else:
                os.close(fd)  # Windows refuses to delete a file another process has open
                fd = None
            os.unlink(stale)
        except OSError:
            pass
        finally:
            if fd is not None:
                os.close(fd)


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
