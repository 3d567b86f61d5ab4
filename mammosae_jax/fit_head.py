"""`python -m mammosae_jax.fit_head`, kept as documented; the command is `mammosae_jax.cli.fit_head`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli.fit_head import main

    sys.exit(main())
