"""`python -m qk_train.study`: the same as `qk-study`."""
import sys

from qk_train.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
