"""VanceAI for data pipelines: an Apache Airflow provider, and the core client it shares with Dagster."""

__version__ = "0.1.0"
