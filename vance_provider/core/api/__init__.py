"""The API's types and errors, shared by every vendor: jobs, balances, usage, the error hierarchy."""
