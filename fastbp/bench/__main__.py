import sys

from . import estimators, forgetting, peers

if __name__ == "__main__":
    if sys.argv[1:2] == ["sklearn"]:  # fastbp.sklearn's estimators against scikit-learn's
        estimators.main(sys.argv[2:])
    elif sys.argv[1:2] == ["forgetting"]:  # continual learning: forgetting with and without guards
        forgetting.main(sys.argv[2:])
    else:  # peers, rnn
        peers.main()
