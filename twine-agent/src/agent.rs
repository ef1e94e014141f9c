//! TODO(skeleton): agent
