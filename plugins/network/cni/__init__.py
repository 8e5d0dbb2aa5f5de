"""``pyctr.network.cni``: container networks made by the standard CNI plugins."""
