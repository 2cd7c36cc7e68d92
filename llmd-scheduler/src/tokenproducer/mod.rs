//! `token-producer` (and its deprecated alias `tokenizer`): a request's prompt token ids
//! for the plugins that read them (being built).

pub mod estimate;
