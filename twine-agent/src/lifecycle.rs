//! TODO(skeleton): lifecycle
