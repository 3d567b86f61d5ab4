"""Where latents fire: heatmaps, localisation scores, galleries and the one figure-saving helper."""
