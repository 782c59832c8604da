#!/usr/bin/env python
"""``python cli.py ...`` from a checkout does exactly what the ``pyro-vae`` command does."""

import sys

from pyro_vae.cli import main

if __name__ == "__main__":
    sys.exit(main())
