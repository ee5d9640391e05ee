"""edgevit: make trained vision transformers (hybrids above all) ready for edge devices."""
__version__ = "0.1.0"
