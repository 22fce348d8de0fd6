"""``python -m lana.cli ...`` (and ``torchrun -m lana.cli ...``): the ``lana`` command."""

import sys

from lana.cli.commands import main

sys.exit(main())
