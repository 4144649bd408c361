"""Sub-commands of the `optimlab` CLI, one module each (see `optimlab.cli`)."""
