"""``python -m visiontrain`` is the ``visiontrain`` command."""

import sys

from visiontrain.cli import main

sys.exit(main())
