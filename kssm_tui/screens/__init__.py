"""Screens of the cockpit: the dashboard and the help screen."""
