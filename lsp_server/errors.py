"""One error hierarchy: everything the server reports to the user derives from InfillError."""


class InfillError(Exception):
    """An error with a message fit to show the user."""


class ModelError(InfillError):
    """The model cannot be found, downloaded, verified or loaded."""


class BackendError(InfillError):
    """The backend failed while serving a request."""


class ContextOverflow(BackendError):
    """The prompt does not fit the model's context: a settings problem, shown once until it is fixed."""

    notify_once = True


class Cancelled(InfillError):
    """The request was cancelled or superseded."""
