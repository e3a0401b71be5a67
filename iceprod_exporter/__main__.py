"""``python -m iceprod_exporter``."""

import sys

from iceprod_exporter.cli import main

sys.exit(main())
