"""``python -m hiergen`` (also under ``accelerate launch -m hiergen``). The guard matters:
worker processes started with ``spawn`` (Dask's nannies, multiprocessing) import this module
again and must not rerun the command."""

import sys

from hiergen.cli import main

if __name__ == "__main__":
    sys.exit(main())
