"""The casd version: the one place it is written (setup.py reads this file without importing casd)."""

__version__ = "0.1.0"
