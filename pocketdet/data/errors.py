class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""
