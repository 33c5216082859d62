"""Operator tools: the ``masking`` command line and what its subcommands run."""
