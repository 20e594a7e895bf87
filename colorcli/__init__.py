"""colorize: colour black-and-white photos from the command line."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("colorize")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
