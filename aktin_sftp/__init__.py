"""Deliver the results of tagged AKTIN Broker requests, Fernet-encrypted, to an SFTP folder."""

__version__ = "0.1.0"
