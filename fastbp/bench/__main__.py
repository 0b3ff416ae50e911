import sys

from . import estimators, peers

if __name__ == "__main__":
    if sys.argv[1:2] == ["sklearn"]:  # fastbp.sklearn's estimators against scikit-learn's
        estimators.main(sys.argv[2:])
    else:  # peers, rnn
        peers.main()
