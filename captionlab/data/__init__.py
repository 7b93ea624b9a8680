"""Caption datasets: one record type, readers for the five benchmarks' published formats."""
