"""The benchmark harness: latency, memory, energy, accuracy; results files and reports."""
