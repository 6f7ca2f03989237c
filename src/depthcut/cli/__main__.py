import sys

from depthcut.cli import main

sys.exit(main())
