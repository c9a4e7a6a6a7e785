"""What a run reports: credits and usage, contact sheets."""
