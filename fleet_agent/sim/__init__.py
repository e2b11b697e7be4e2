"""Simulated robots: Meta-World (MuJoCo) arms driven by scripted experts, rendered on CPU."""
