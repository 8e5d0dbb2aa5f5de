"""Content store plugins (type ``content``): backend blob stores with no notion of namespaces."""
