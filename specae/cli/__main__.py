import sys

from specae.cli import main

sys.exit(main())
