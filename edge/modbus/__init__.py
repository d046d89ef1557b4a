"""The pure Modbus layer: device profiles, value decoding and request planning (no network I/O)."""
