"""``python -m reft.bench``: see :mod:`reft.bench.profiler`."""

from reft.bench.profiler import main

raise SystemExit(main())
