"""Network plugins (kind ``network``)."""
