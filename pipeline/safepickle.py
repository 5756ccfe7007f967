"""Temporary alias: tools/penn_short_disjoint.py still imports load_pickle from here. Delete this file once it
imports ``from stores.safepickle import load_pickle``."""

from stores.safepickle import load_pickle  # noqa: F401
