//! TODO(skeleton): logs
