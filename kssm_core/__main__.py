import sys

from kssm_core.cli import main

sys.exit(main())
