"""Test helpers that are not tests themselves (fake servers and the like)."""
