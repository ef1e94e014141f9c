//! TODO(skeleton): container
