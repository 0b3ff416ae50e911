import sys

from . import cnn, estimators, peers, start

if __name__ == "__main__":
    if sys.argv[1:2] == ["sklearn"]:  # fastbp.sklearn's estimators against scikit-learn's
        estimators.main(sys.argv[2:])
    elif sys.argv[1:2] == ["start"]:  # import + first training step, in fresh processes
        start.main(sys.argv[2:])
    elif sys.argv[1:2] == ["cnn"]:  # convolutional networks against torch and JAX
        cnn.main(sys.argv[2:])
    else:  # peers, rnn
        peers.main()
