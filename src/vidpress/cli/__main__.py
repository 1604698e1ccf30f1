"""``python -m vidpress.cli``."""

from . import main

main()
