"""Experiment suites (the runs that reproduce a paper table): `catalogue` (the suites as data), `plan` (runs made
concrete: configs, overrides, folder states) and `run` (preparing the data, executing the runs through the
recipes, collecting the results). The demo (`make demo`) is `demo`."""
