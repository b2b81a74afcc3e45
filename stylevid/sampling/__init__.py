"""Sampling pieces that more than one method uses: latent warping, DDIM inversion, VAE coding."""
