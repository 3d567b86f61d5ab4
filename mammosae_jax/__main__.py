"""`python -m mammosae_jax`: list the commands."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli import main

    sys.exit(main())
