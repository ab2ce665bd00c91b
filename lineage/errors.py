"""The one exception type that means "the user asked for something we cannot do".

The CLI turns a UserError into a single line on stderr and a non-zero exit, with no
traceback. Anything else escaping is a bug in the pipeline and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, config or store, stated with its fix."""

    def _render_traceback_(self) -> list[str]:
        """IPython and Jupyter show these lines in place of a traceback: the same one line as the CLI."""
        return [f"error: {self}"]
