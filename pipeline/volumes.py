"""Temporary alias: stages/train/stage.py still imports VolumeStore from here. Delete this file once it
imports ``from stores.volumes import VolumeStore``."""

from stores.volumes import VolumeStore  # noqa: F401
