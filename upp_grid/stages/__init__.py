"""Pipeline stages: pure functions of (config, inputs) that write outputs atomically."""
