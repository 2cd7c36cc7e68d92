//! The `token-producer`'s estimate backend (being built).
