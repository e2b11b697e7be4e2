"""Retrain triggers: when the platform asks for a new policy version, and how it launches one."""
