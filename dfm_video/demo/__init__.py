"""What `make demo` shows: sample-quality measures, the comparison sheet and its summary."""
