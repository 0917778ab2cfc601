import sys

from alzprog.cli import main

sys.exit(main())
