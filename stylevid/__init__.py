"""stylevid: text-, image- and style-guided video diffusion."""
__version__ = "0.1.0"
