"""``python -m iceprod_exporter``."""

import sys

from .cli import main

sys.exit(main())
