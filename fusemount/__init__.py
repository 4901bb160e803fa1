"""fusemount: one FUSE view of managed mounts, proxied through held descriptors."""

__version__ = "0.1.0"
