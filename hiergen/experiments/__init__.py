"""Experiments: forward-backward sweeps on grammars (see issue 6)."""
