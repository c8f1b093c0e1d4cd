"""Widgets shared by the screens: live curves and compare's answer columns."""
