"""``python -m casd.study``."""
import sys

from casd.study.cli import main

sys.exit(main())
