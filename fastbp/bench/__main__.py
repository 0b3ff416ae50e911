"""``python -m fastbp.bench NAME [options]``: one table from a benchmark's name to its module."""

import sys

from . import cnn, estimators, forgetting, gemm, peers, start

# Benchmarks with a module of their own; anything else (peers, rnn) is the peer comparison's.
COMMANDS = {
    "sklearn": estimators,   # fastbp.sklearn's estimators against scikit-learn's
    "start": start,          # import + first training step, in fresh processes
    "cnn": cnn,              # convolutional networks against torch and JAX
    "forgetting": forgetting,  # continual learning: forgetting with and without guards
    "gemm": gemm,            # the GEMM alone and after a NumPy matmul, beside OpenBLAS
}

if __name__ == "__main__":
    command = COMMANDS.get(sys.argv[1] if len(sys.argv) > 1 else None)
    if command is not None:
        command.main(sys.argv[2:])
    else:  # peers, rnn
        peers.main()
