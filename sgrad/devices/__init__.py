"""Device runners: compiled chunks of steps, data parallelism and the update-unlocked pipeline."""
