from __future__ import annotations

import sys

from pytest_seqdrift.cli import main

sys.exit(main())
