"""voxbridge benchmark suite (planned; see benchmarks/README.md)."""
