"""The tapct command line."""
