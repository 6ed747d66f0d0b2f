# Included by _core.pyx: subjects (NATS semantics): checking a subject or a
# pattern, and matching a message's subject, read from the segment before
# its payload is deserialized, against a subscription's patterns.

cdef dict _SUBJECTS = {}  # str -> its bytes: subjects checked already (bounded)


def check_subject(str text, bint pattern=False):
    """The bytes of ``text``, checked as a subject (``pattern=False``: what a
    publisher gives) or a subscription's pattern; ValueError if it is not one.

    Tokens are separated by single dots, none empty (no dot at either end),
    without whitespace; a pattern's token may be ``*`` (any one token), and
    its last token ``>`` (one or more tokens); a subject has no wildcards.
    At most 255 bytes (UTF-8)."""
    what = "subject pattern" if pattern else "subject"
    b = text.encode()
    if not b:
        raise ValueError(f"an empty {what}")
    if len(b) > FQ_MAX_SUBJECT:
        raise ValueError(f"{what} {text!r} is longer than {FQ_MAX_SUBJECT} bytes")
    toks = text.split(".")
    for i, t in enumerate(toks):
        if not t:
            raise ValueError(f"{what} {text!r} has an empty token (tokens are separated by "
                             "single dots, with none at either end)")
        if any(ch.isspace() for ch in t):
            raise ValueError(f"{what} {text!r} contains whitespace")
        if t == "*" or t == ">":
            if not pattern:
                raise ValueError(f"subject {text!r}: a published subject has no wildcards "
                                 "('*', '>'): those are for subscribe(subjects=...)")
            if t == ">" and i != len(toks) - 1:
                raise ValueError(f"subject pattern {text!r}: '>' may only be the last token")
        elif "*" in t or ">" in t:
            raise ValueError(f"{what} {text!r}: '*' and '>' are whole tokens only")
    return b


cdef inline bytes _subject_bytes(object subject):
    """A publisher's subject as bytes, checked once per distinct subject."""
    b = _SUBJECTS.get(subject)
    if b is not None:
        return <bytes>b
    if not isinstance(subject, str):
        raise TypeError(f"a subject is a str, not {type(subject).__name__}")
    b = check_subject(subject, False)
    if len(_SUBJECTS) < 4096:
        _SUBJECTS[subject] = b
    return <bytes>b


cdef bint _pattern_match(const unsigned char *p, Py_ssize_t pl,
                         const unsigned char *s, Py_ssize_t sl) noexcept nogil:
    """Does subject s match pattern p (checked by check_subject)?  s comes
    from the segment: any bytes, bounded by sl."""
    cdef Py_ssize_t i = 0, j = 0
    while i < pl:
        if p[i] == b'>':  # the last token: one or more tokens left
            return j < sl
        if j >= sl:
            return False
        if p[i] == b'*':  # one token, whatever it holds (not empty)
            if s[j] == b'.':
                return False
            while j < sl and s[j] != b'.':
                j += 1
            i += 1
        else:
            while i < pl and p[i] != b'.':
                if j >= sl or s[j] != p[i]:
                    return False
                i += 1
                j += 1
            if j < sl and s[j] != b'.':
                return False
        if i < pl:  # a dot in both
            if j >= sl:
                return False
            i += 1
            j += 1
            if j >= sl:  # the subject ends with a dot (not a valid one)
                return False
    return j == sl


cdef bint _subjects_match(tuple patterns, const unsigned char *s, Py_ssize_t sl):
    """Does subject s match one of the patterns (bytes)?"""
    cdef bytes pat
    for pat in patterns:
        if _pattern_match(<const unsigned char *>PyBytes_AS_STRING(pat),
                          PyBytes_GET_SIZE(pat), s, sl):
            return True
    return False


def subject_matches(str pattern, str subject):
    """Does ``subject`` match ``pattern`` (NATS semantics; both are checked:
    ValueError if either is not valid)?"""
    p = check_subject(pattern, True)
    s = check_subject(subject, False)
    return _pattern_match(<const unsigned char *>PyBytes_AS_STRING(p), len(p),
                          <const unsigned char *>PyBytes_AS_STRING(s), len(s))
