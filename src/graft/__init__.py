"""graft: remote-sensing vision-language models without text annotations (GRAFT, Mall et al., ICLR 2024)."""

__version__ = "0.1.0"
