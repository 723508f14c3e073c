"""Execution: running one code request on a kernel and the ordered outputs it produces."""
