"""Vector data: tabular sets, user files and SBI simulators, and the flows that model them."""
