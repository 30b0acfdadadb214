"""Developer commands run from a checkout (not part of any running operator)."""
