"""Device-side runners: each file is copied beside device_bench.py onto a device and defines ``Runner``."""
