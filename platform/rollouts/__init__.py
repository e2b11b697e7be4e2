"""Staged rollouts: stages and gates (pure logic), cohorts, the controller, serving backends."""
