"""The catalog: what the platform knows about robots, embodiments, episodes and uploads."""
