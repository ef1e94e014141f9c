//! TODO(skeleton): daemon
