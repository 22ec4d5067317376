"""``python -m mountplan``."""

from __future__ import annotations

import sys

from mountplan.cli import main

sys.exit(main())
