"""The one exception type every malformed or unusable image raises, and the warning for an
image (or a module of it) that refmarshal steps aside for:

``ImageError``          an image is malformed, truncated, corrupted, stale or built for another
                        interpreter; callers that import through an image step aside
``RefmarshalWarning``   an image cannot be used (or one of its modules cannot): stock import
                        carries on; issued once per problem

Both are made in the package's ``__init__`` (the import hook's path imports one module fewer)
and are the same objects here.
"""

from . import ImageError, RefmarshalWarning

__all__ = ["ImageError", "RefmarshalWarning"]
