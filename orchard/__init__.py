"""orchard: grow scarce domain data into aligned small models (synth → review → align)."""
__version__ = "0.1.0"
