"""A worker that cannot serve what it was asked to says so in one line at start-up.

Raised by the loaders (device, model class, chunk size, a download with no fallback) before
any socket opens; the CLI prints the message and exits, a Modal container fails its start.
"""


class StartupRefusal(ValueError):
    """The configuration cannot be served: the message names what was expected and what was found."""
