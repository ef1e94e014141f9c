//! twine facade.
#[cfg(feature = "spec")]
pub use twine_spec as spec;
