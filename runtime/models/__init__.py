"""Model definitions for the runtime."""
