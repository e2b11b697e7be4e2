"""fleet_agent/sim."""
