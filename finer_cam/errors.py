"""The one exception type the CLIs turn into a one-line message and a non-zero exit status."""


class FinerCamError(Exception):
    """A problem with the user's input (a file, a flag, a checkpoint) that they can act on."""
