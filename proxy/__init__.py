"""pairproxy: a forwarding TCP proxy built on a small selectors reactor."""

__version__ = "0.1.0"
