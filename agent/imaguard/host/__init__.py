"""Host adapters: running processes and host identity, returned as plain typed facts."""
