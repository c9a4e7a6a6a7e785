"""The Airflow face of VanceAI: triggers."""
