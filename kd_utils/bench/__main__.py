"""``python -m kd_utils.bench [--quick] [--only NAME[,NAME]] ...``: see :mod:`kd_utils.bench`."""
from .runner import main

raise SystemExit(main())
