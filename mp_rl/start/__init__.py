"""The start: what the machine allows (resources) and the plan a run is checked and sized by (preflight)."""
