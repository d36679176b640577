"""Peer servers for the benchmarks, each run in its own environment."""
