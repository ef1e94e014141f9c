//! placeholder: the nspawn harness is being written
