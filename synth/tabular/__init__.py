"""orchard.synth.tabular: privacy-preserving synthetic tables (SDV) and the privacy gate that guards their use."""
