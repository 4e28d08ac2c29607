"""p2p-defense: the Poison-to-Poison defense against data-poisoning backdoors, and honest measurement."""

__version__ = "0.1.0"
