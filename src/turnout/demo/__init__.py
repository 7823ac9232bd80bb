"""`turnout demo`: a zero-downtime rollout of a real model, end to end, on one machine."""
