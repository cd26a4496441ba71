"""The one exception type every malformed or unusable image raises."""


class ImageError(Exception):
    """An image is malformed, truncated, corrupted, stale or built for another interpreter.

    The message says what is wrong and, where it applies, at which file offset.
    Callers that import through an image treat it as "step aside": stock import carries on.
    """


class RefmarshalWarning(RuntimeWarning):
    """An image cannot be used (or one of its modules cannot): refmarshal steps aside for it
    and stock import carries on.  Issued once per problem."""
