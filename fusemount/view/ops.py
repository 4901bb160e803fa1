"""The pyfuse3 Operations (SPEC 3, 4, 5): moved to subtree.py, re-exported while ops.py
becomes the router over the control files and the subtree operations."""

from fusemount.view.subtree import Ops

__all__ = ["Ops"]
