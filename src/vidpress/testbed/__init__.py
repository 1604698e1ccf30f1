"""The offline testbed: procedural video QA whose answers need time structure."""
