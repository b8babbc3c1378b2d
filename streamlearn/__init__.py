"""streamlearn: streaming continuous learning for storefront recommendations."""

__version__ = "0.1.0"
