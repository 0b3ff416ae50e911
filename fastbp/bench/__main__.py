import sys

from . import peers, start

if __name__ == "__main__":
    if sys.argv[1:2] == ["start"]:
        start.main(sys.argv[2:])
    else:
        peers.main()
