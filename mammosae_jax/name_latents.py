"""`python -m mammosae_jax.name_latents`, kept as documented; the command is `mammosae_jax.cli.name_latents`."""
import sys

if __name__ == "__main__":
    from mammosae_jax.cli.name_latents import main

    sys.exit(main())
