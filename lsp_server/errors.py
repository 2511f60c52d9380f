"""One error hierarchy: everything the server reports to the user derives from InfillError."""


class InfillError(Exception):
    """An error with a message fit to show the user."""


class ModelError(InfillError):
    """The model cannot be found, downloaded, verified or loaded."""


class BackendError(InfillError):
    """The backend failed while serving a request."""


class Cancelled(InfillError):
    """The request was cancelled or superseded."""
