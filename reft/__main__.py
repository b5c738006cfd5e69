"""``python -m reft``: the command line (:mod:`reft.cli`), e.g. ``python -m reft run --help``."""

from reft.cli import main

raise SystemExit(main())
