"""``python -m reft.flower``: see :func:`reft.flower.launch.main`."""

import sys

from reft.flower.launch import main

sys.exit(main())
