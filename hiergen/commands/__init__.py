"""Sub-commands of the ``hiergen`` CLI: one module each, exposing ``register(subparsers)``."""
