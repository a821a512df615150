"""`python -m simulations.benchmarks ...`: the bench command on its own (the lifecycle modes'
child processes run through it)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
