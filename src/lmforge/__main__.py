"""`python -m lmforge ...`: the command line, so that `torchrun --nproc_per_node N -m lmforge train ...`
starts every rank with the same command as a single process (`lmforge` is the installed script)."""

import sys

from lmforge.cli import main

sys.exit(main())
