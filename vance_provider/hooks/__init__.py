"""The Airflow face of VanceAI: hooks."""
