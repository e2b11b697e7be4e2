"""The `wamfleet` command: the one composition root that may import every component."""
