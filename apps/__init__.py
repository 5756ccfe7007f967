"""Applications built on the stages: things a user runs on new videos rather than stages of a workdir."""
