//! TODO(skeleton): identity
