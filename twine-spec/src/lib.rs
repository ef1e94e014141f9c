//! twine-spec (work in progress).
