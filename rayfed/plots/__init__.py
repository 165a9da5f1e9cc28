"""Figures of rayfed runs as PNG files (matplotlib, Agg backend)."""
