"""``make demo`` (``python -m vance_provider.demo``): the whole pipeline on the built-in simulator.

* :mod:`vance_provider.demo.data` - the sample dataset (``python -m vance_provider.demo.data FOLDER``);
* :mod:`vance_provider.demo.faces` - the Dagster and Airflow steps, each in a child process;
* :mod:`vance_provider.demo.pictures` - the contact sheet and the credit charts.

The demo imports Airflow and Dagster (in its child processes): it is kept apart from the
provider's modules, which import neither at load time.
"""
