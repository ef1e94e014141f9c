//! `twine-control`: the reference control plane's CLI.

fn main() {}
