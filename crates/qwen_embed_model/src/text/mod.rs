//! Text before the model: the tokenizer with the instruction format and length policy, and the chunking of long
//! documents.

pub mod chunking;
pub mod tokenizer;
