"""The end-to-end demo: its plan (`plan`), the stage runner (`stages`), quality gates (`gates`) and
report (`report`). `python -m mammosae_jax.demo` runs it (command line: `mammosae_jax.cli.demo`)."""
