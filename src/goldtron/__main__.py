import sys

from goldtron.cli import main

sys.exit(main())
