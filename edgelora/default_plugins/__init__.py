"""Built-in behaviour, written against the public hooks exactly like third-party plugins."""
