"""Metrics plugins (type ``metrics``): what pyctr exposes to monitoring systems."""
