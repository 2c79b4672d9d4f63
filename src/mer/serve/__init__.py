"""`python -m mer.serve`: the HTTP service (see mer.serving.app; arguments in mer.cli.serve)."""
