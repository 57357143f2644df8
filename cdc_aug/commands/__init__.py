"""One module per ``cdc-aug`` subcommand; each defines ``register(subparsers, help)``."""
