import sys

from trilora.cli import main

sys.exit(main())
