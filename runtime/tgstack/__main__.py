import sys

from tgstack.cli import main

sys.exit(main())
