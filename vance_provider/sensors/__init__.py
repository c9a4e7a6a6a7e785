"""The Airflow face of VanceAI: sensors."""
