"""Garbage-collection plugins."""
