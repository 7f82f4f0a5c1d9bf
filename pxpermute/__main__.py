"""``python -m pxpermute ...`` (also under ``torchrun -m pxpermute run ...``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
