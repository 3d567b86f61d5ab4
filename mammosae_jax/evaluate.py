"""`python -m mammosae_jax.evaluate`, kept as documented; the command is `mammosae_jax.cli.evaluate`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.analysis.evaluation import main

    sys.exit(main())
