"""The ``fgattr`` command line: parsing, one module per subcommand, the one error path."""
