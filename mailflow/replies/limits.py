"""Limits: every one keeps a hostile mail from costing more than a fraction of a second."""

MAX_RAW_BYTES = 25 * 1024 * 1024  # typical SMTP size limit; the tail of a bigger blob is ignored
MAX_MULTIPARTS = 200  # more multipart declarations than this: MIME bomb, parse headers only
MAX_PARTS = 1000  # parts visited when looking for the body
MAX_TEXT_CHARS = 100_000  # body text searched for quotes; an update is never this long
MAX_LIBRARY_HEADER_BYTES = 64 * 1024  # mail-parser decodes every header eagerly, in O(n^2)
MAX_HTML_CHARS = 2_000_000
_HEADER_CHARS = 2000
