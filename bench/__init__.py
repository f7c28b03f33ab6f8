"""edgekit.bench: measure latency and throughput per device, and compare devices."""
