"""One adapter per supported model family (:mod:`vidpress.adapters.registry` lists them)."""
