import sys

from hiergen.cli import main

sys.exit(main())
