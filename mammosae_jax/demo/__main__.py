"""`python -m mammosae_jax.demo`: kept as documented; the command is `mammosae_jax.cli.demo`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli.demo import main

    sys.exit(main())
