"""Training the small pixel-space diffusion model that ships as the default."""
