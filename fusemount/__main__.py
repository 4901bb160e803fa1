"""`python -m fusemount` is the `fusemount` command."""

import sys

from fusemount.cli import main

sys.exit(main())
