"""Side-by-side benchmarks of the framework against its peers (`make bench`; see benchmarks/README.md)."""
