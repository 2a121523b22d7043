"""Dialogs of the plugin (pure Python Qt through qgis.PyQt)."""
