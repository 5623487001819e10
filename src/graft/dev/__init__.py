"""Tools for working on graft itself (not used by any stage): ``python -m graft.dev.layers``."""
