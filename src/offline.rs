//! `cascade features`: a model's declared features for historical rows,
//! computed by the very plans that serve, so that a training matrix and a
//! served one cannot disagree.
//!
//! The rows are a Parquet file with one row per (user, item, context, time):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `item_id` | string | required; must be in the catalog |
//! | `user_id` | string, nullable | a user of the catalog; null or unknown = the cold-start path |
//! | `timestamp` | timestamp or int64 ms, optional | the row's time: clock defaults (`now.hour`) and `days_since` use it; default now |
//! | `<context field>` | as the schema declares, nullable | any declared context field; absent or null = not given |
//!
//! The output is a Parquet file with one `float32` column per feature, in
//! the model's order, row for row (what `pandas.read_parquet` returns as
//! the training matrix).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;

use crate::catalog::Catalog;
use crate::data::context::Context;
use crate::data::features::{FeatureDecl, FeatureSet, Subject};
use crate::data::parquet::{millis, numbers, read_batches, strings, write, Out};
use crate::data::schema::FieldType;

/// One row's inputs, as the file gives them.
struct Row {
    item: u32,
    user: Option<u32>,
    ctx: Vec<Option<f32>>,
    at_ms: f64,
}

/// Computes `decls` for every row of `rows` against `catalog` and writes
/// the matrix to `out`. Returns the number of rows.
pub fn run(
    catalog: &Catalog,
    decls: &[FeatureDecl],
    rows: &Path,
    out: &Path,
) -> Result<usize, String> {
    let set = FeatureSet::compile(decls, &catalog.tables())?;
    let shown = rows
        .file_name()
        .map_or("rows".into(), |n| n.to_string_lossy().into_owned());
    let batches = read_batches(rows, &shown).map_err(|e| e.to_string())?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_millis() as f64);
    let mut parsed = Vec::new();
    for batch in &batches {
        read_rows(catalog, batch, parsed.len(), now_ms, &shown, &mut parsed)?;
    }
    let width = set.width();
    let mut columns: Vec<Vec<f32>> = vec![Vec::with_capacity(parsed.len()); width];
    let (mut matrix, mut missing) = (Vec::new(), vec![0u32; width]);
    let schema = &catalog.schema;
    // Consecutive rows of one subject (same user, context and time) are
    // assembled together, as a served request's candidates are.
    let mut start = 0;
    while start < parsed.len() {
        let first = &parsed[start];
        let end = start
            + parsed[start..]
                .iter()
                .take_while(|r| {
                    r.user == first.user && r.ctx == first.ctx && r.at_ms == first.at_ms
                })
                .count();
        let at = UNIX_EPOCH + Duration::from_millis(first.at_ms.max(0.0) as u64);
        let subject = Subject {
            user: first.user,
            ctx: Context(first.ctx.clone()).resolve(schema, at),
            now_ms: first.at_ms,
        };
        let items: Vec<u32> = parsed[start..end].iter().map(|r| r.item).collect();
        set.assemble(
            &catalog.items,
            &catalog.users,
            &subject,
            &items,
            &mut matrix,
            &mut missing,
        );
        for r in 0..items.len() {
            for (j, col) in columns.iter_mut().enumerate() {
                col.push(matrix[r * width + j]);
            }
        }
        start = end;
    }
    write(
        out,
        set.names
            .iter()
            .map(String::as_str)
            .zip(columns.into_iter().map(Out::F32))
            .collect(),
    )?;
    Ok(parsed.len())
}

fn read_rows(
    catalog: &Catalog,
    batch: &RecordBatch,
    offset: usize,
    now_ms: f64,
    shown: &str,
    out: &mut Vec<Row>,
) -> Result<(), String> {
    let err = |column: &str, row: usize, why: String| {
        format!("{shown}: column \"{column}\", row {}: {why}", offset + row)
    };
    let column = |name: &str| batch.column_by_name(name);
    let n = batch.num_rows();
    let items = column("item_id")
        .and_then(|a| strings(a.as_ref()))
        .ok_or_else(|| format!("{shown}: needs an item_id column of strings"))?;
    let users = match column("user_id") {
        Some(a) => {
            strings(a.as_ref()).ok_or_else(|| format!("{shown}: user_id must hold strings"))?
        }
        None => vec![None; n],
    };
    let times = match column("timestamp") {
        Some(a) => millis(a.as_ref()).ok_or_else(|| {
            format!("{shown}: timestamp must be a timestamp or epoch milliseconds")
        })?,
        None => vec![None; n],
    };
    let schema = &catalog.schema;
    let mut ctx: Vec<Vec<Option<f32>>> = Vec::with_capacity(schema.context.len());
    for f in &schema.context {
        let Some(a) = column(&f.name) else {
            ctx.push(vec![None; n]);
            continue;
        };
        let bad_type = || {
            format!(
                "{shown}: column \"{}\" cannot be read as a {}",
                f.name,
                f.ty.name()
            )
        };
        ctx.push(match &f.ty {
            FieldType::Category(_) => {
                let values = strings(a.as_ref()).ok_or_else(bad_type)?;
                let mut codes = Vec::with_capacity(n);
                for (r, v) in values.into_iter().enumerate() {
                    codes.push(match v {
                        None => None,
                        Some(s) => f
                            .code_of(&s, false)
                            .map_err(|e| err(&f.name, r, e))?
                            .map(|c| c as f32),
                    });
                }
                codes
            }
            _ => numbers(a.as_ref())
                .ok_or_else(bad_type)?
                .into_iter()
                .map(|v| v.map(|x| x as f32))
                .collect(),
        });
    }
    for r in 0..n {
        let id = items[r]
            .as_deref()
            .ok_or_else(|| err("item_id", r, "is null".into()))?;
        let item = catalog
            .items
            .row(id)
            .ok_or_else(|| err("item_id", r, format!("item \"{id}\" is not in the catalog")))?;
        out.push(Row {
            item,
            user: users[r].as_deref().and_then(|u| catalog.users.row(u)),
            ctx: ctx.iter().map(|c| c[r]).collect(),
            at_ms: times[r].unwrap_or(now_ms),
        });
    }
    Ok(())
}
