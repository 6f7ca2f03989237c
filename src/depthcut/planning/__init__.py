"""Planning: pure functions from Scores and a config to a Plan."""
