"""`python -m fusemount` is the `fusemount` command."""

import sys

from fusemount.cli.commands import main

sys.exit(main())
