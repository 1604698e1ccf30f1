"""Vision-slot stages: what the vision tower encodes, and at what resolution."""
