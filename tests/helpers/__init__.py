"""Test helpers, one module per topic, each named `<topic>_data`: they build the inputs the tests
need in the real formats (caches, checkpoints, DICOMs, tokenizers, reference files)."""
