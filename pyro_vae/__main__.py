"""``python -m pyro_vae ...`` does exactly what the ``pyro-vae`` command does (e.g. where the console
script is not on ``PATH``)."""

import sys

from pyro_vae.cli import main

if __name__ == "__main__":
    sys.exit(main())
