"""fleet_agent."""
