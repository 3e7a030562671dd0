"""The one error prep raises for its user's inputs."""


class PrepError(ValueError):
    """An input is missing, unreadable or inconsistent; the message is one line naming it."""
