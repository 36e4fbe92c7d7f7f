//! Graph simulator library.
