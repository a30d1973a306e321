"""Data errors: each message names the file or folder and the fix."""
from ..errors import CoevoError


class DataError(CoevoError, ValueError):
    """Bad or missing input data (folder, image file); the message names it and says what to do."""
