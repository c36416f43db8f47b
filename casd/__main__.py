"""``python -m casd``: MMSA's command line (casd/mmsa_run.py)."""
import sys

from casd.mmsa_run import main

sys.exit(main())
