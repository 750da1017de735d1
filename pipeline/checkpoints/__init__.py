"""Trained networks on disk: the typed checkpoint metadata, task-level network wrappers, and safe loading.

Shared by training (which saves) and every later stage (which loads); it imports no other stage.
"""
