"""The offline testbed: procedural video QA whose answers need time structure (issue: trained testbed)."""
