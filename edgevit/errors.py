"""The two kinds of failure the CLI distinguishes (exit code 2 and 1)."""


class BadInput(Exception):
    """The user's input is wrong (recipe, path, checkpoint, images): exit code 2, one clear line."""


class RunFailure(Exception):
    """Something failed while running a valid recipe: exit code 1."""
