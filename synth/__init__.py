"""orchard.synth: a teacher LLM grows seed examples into instruction data; SDV grows private tables."""
