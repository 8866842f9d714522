"""``python -m pipelines.cli``: the ``gemma4`` command."""

import sys

from . import main

sys.exit(main())
