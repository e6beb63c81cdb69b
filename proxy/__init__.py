"""pairproxy: a forwarding TCP proxy built on a small epoll reactor of its own."""

__version__ = "0.1.0"
