//! The feature language: expressions over `item.*`, `user.*` and `ctx.*`.
//!
//! - [`parse`]: text to a syntax tree, positions kept.
//! - [`compile`]: type-checked against the schema and the loaded tables
//!   into a plan that reads fields by offset.
//! - [`eval`]: the plan over all rows of a stage, a column at a time.
//!
//! Arithmetic `+ - * /`, comparisons `== != < <= > >=` (1 or 0), `&& || !`,
//! `x[i]` (a vector by constant position or, for a vector declared
//! `by = "<vocabulary>"`, by a category of it: `item.lift[user.job]`),
//! strings as category values (`user.colour == 'red'`), and the functions
//! `log1p ln exp sqrt abs min max clip if is_missing coalesce dot cosine
//! sum multihot has len code days_since`, and over live state from events
//! `count(item|user, kind = '…', min_value = …, last = '…')` (a windowed
//! counter the schema declares) and `recency(item|user, kind = '…')`.

pub mod compile;
pub mod eval;
pub mod parse;

pub use compile::{Num, Reach, Src, Tables};

/// Parses and compiles `text`; an error says where, with the text.
pub fn plan(text: &str, tables: &Tables<'_>) -> Result<Num, String> {
    let at = |e: parse::Error| {
        format!(
            "{}, at character {} of `{text}`",
            e.message,
            text[..e.pos.min(text.len())].chars().count() + 1
        )
    };
    let tree = parse::parse(text).map_err(at)?;
    compile::compile(&tree, tables).map_err(at)
}
