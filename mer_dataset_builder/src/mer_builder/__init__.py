"""mer_builder: raw emotion corpora -> one unified manifest (MER DESIGN.md, Contract 1)."""

__version__ = "0.1.0"
