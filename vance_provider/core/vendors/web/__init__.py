"""The web API (api.vanceai.com/web_api): job-based modules and workflows."""
