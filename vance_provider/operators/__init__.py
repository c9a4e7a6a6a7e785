"""The Airflow face of VanceAI: operators."""
