"""``python -m benchmarks [--quick] [--only NAME[,NAME]] ...``: see :mod:`benchmarks`."""
from .runner import main

raise SystemExit(main())
