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
//! | `recent_items` | list of strings, optional | the request's recent items (`session.*`); default none |
//! | `<context field>` | as the schema declares, nullable | any declared context field; absent or null = not given |
//!
//! The output is a Parquet file with one `float32` column per feature, in
//! the model's order, row for row (what `pandas.read_parquet` returns as
//! the training matrix).
//!
//! Features that read live state (`count()`, `recency()`) need the
//! interactions that led up to each row: `--events`, a Parquet file of
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `user_id`, `item_id` | string | who did it to what (items must be in the catalog) |
//! | `kind` | string, optional | one of `events.kinds` (default: the first one the schema lists) |
//! | `id` | string, optional | the event's id (default: its row number) |
//! | `request_id` | string, optional | the `/v1/rank` answer an outcome names (`cascade dataset`) |
//! | `value` | number, nullable, optional | e.g. the rating |
//! | `timestamp` | timestamp or int64 ms | when |
//!
//! They are replayed in time order through the same live view the server
//! keeps, and each row sees exactly the events before its own timestamp —
//! what the server had applied when it ranked at that moment.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;

use crate::catalog::Catalog;
use crate::data::context::Context;
use crate::data::features::{FeatureDecl, FeatureSet, Sources, Subject};
use crate::data::parquet::{millis, numbers, read_batches, string_lists, strings, write, Out};
use crate::data::schema::FieldType;
use crate::events::online::Online;
use crate::events::Event;

/// One row's inputs, as the file gives them.
struct Row {
    item: u32,
    user: Option<u32>,
    user_id: Option<String>,
    ctx: Vec<Option<f32>>,
    at_ms: f64,
    /// The request's recent items (`session.*`), as catalog rows.
    recent: Vec<u32>,
}

/// Computes `decls` for every row of `rows` against `catalog` (and the
/// interactions of `events`, replayed) and writes the matrix to `out`.
/// Returns the number of rows.
pub fn run(
    catalog: &Catalog,
    decls: &[FeatureDecl],
    rows: &Path,
    events: Option<&Path>,
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
    let history = match events {
        Some(path) => read_events(catalog, path)?,
        None if set.live.item || set.live.user => return Err(
            "the features read live state (count, recency): give the interactions with --events"
                .into(),
        ),
        None => Vec::new(),
    };
    // Only the counters matter offline: one history item, every user kept.
    let online = Online::new(
        std::sync::Arc::new(catalog.clone()),
        crate::events::online::Limits {
            max_history: 1,
            max_users: usize::MAX,
            ..Default::default()
        },
    );
    let width = set.width();
    let schema = &catalog.schema;
    // Consecutive rows of one subject (same user, context and time) are
    // assembled together, as a served request's candidates are; subjects
    // go in time order, so that the replay only moves forward.
    let mut groups = Vec::new();
    let mut start = 0;
    while start < parsed.len() {
        let first = &parsed[start];
        let end = start
            + parsed[start..]
                .iter()
                .take_while(|r| {
                    r.user_id == first.user_id
                        && r.ctx == first.ctx
                        && r.at_ms == first.at_ms
                        && r.recent == first.recent
                })
                .count();
        groups.push(start..end);
        start = end;
    }
    groups.sort_by(|a, b| parsed[a.start].at_ms.total_cmp(&parsed[b.start].at_ms));
    let mut matrix = vec![0f32; parsed.len() * width];
    let (mut block, mut missing) = (Vec::new(), vec![0u32; width]);
    let mut applied = 0;
    for group in groups {
        let first = &parsed[group.start];
        let before = history[applied..].partition_point(|e| match e {
            Event::Interaction { timestamp, .. } => (*timestamp as f64) < first.at_ms,
            Event::Item { .. } | Event::User { .. } => true,
        });
        online.apply(&history[applied..applied + before]);
        applied += before;
        let at = UNIX_EPOCH + Duration::from_millis(first.at_ms.max(0.0) as u64);
        let subject = Subject {
            user: first.user,
            ctx: Context(first.ctx.clone()).resolve(schema, at),
            now_ms: first.at_ms,
            user_id: first.user_id.clone(),
            session: crate::pipeline::stages::session_vector(catalog, &first.recent),
        };
        let items: Vec<u32> = parsed[group.clone()].iter().map(|r| r.item).collect();
        online.read(|view| {
            let src = Sources {
                items: &catalog.items,
                users: &catalog.users,
                live: Some(view),
            };
            set.assemble(&src, &subject, &items, &mut block, &mut missing)
        });
        matrix[group.start * width..group.end * width].copy_from_slice(&block);
    }
    let columns: Vec<Vec<f32>> = (0..width)
        .map(|j| matrix.iter().skip(j).step_by(width).copied().collect())
        .collect();
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

/// The interactions of an `--events` file, checked, in time order.
pub fn read_events(catalog: &Catalog, path: &Path) -> Result<Vec<Event>, String> {
    let shown = path
        .file_name()
        .map_or("events".into(), |n| n.to_string_lossy().into_owned());
    let kinds = &catalog.schema.event_kinds;
    let mut out = Vec::new();
    for batch in read_batches(path, &shown).map_err(|e| e.to_string())? {
        let n = batch.num_rows();
        let column = |name: &str| batch.column_by_name(name);
        let text = |name: &str| -> Result<Option<Vec<Option<String>>>, String> {
            column(name)
                .map(|a| {
                    strings(a.as_ref())
                        .ok_or_else(|| format!("{shown}: column \"{name}\" must hold strings"))
                })
                .transpose()
        };
        let need = |name: &str, v: Option<Vec<Option<String>>>| {
            v.ok_or_else(|| format!("{shown}: needs a {name} column of strings"))
        };
        let users = need("user_id", text("user_id")?)?;
        let items = need("item_id", text("item_id")?)?;
        let kind = text("kind")?;
        // Optional: the events' ids and the answers they name (outcomes).
        let ids = text("id")?;
        let request_ids = text("request_id")?;
        let values = match column("value") {
            Some(a) => numbers(a.as_ref())
                .ok_or_else(|| format!("{shown}: column \"value\" must hold numbers"))?,
            None => vec![None; n],
        };
        let times = column("timestamp")
            .and_then(|a| millis(a.as_ref()))
            .ok_or_else(|| {
                format!("{shown}: needs a timestamp column (a timestamp or epoch milliseconds)")
            })?;
        for r in 0..n {
            let at = out.len();
            let bad =
                |column: &str, why: &str| format!("{shown}: column \"{column}\", row {at}: {why}");
            let user_id = users[r].clone().ok_or_else(|| bad("user_id", "is null"))?;
            let item_id = items[r].clone().ok_or_else(|| bad("item_id", "is null"))?;
            if catalog.items.row(&item_id).is_none() {
                return Err(bad(
                    "item_id",
                    &format!("item \"{item_id}\" is not in the catalog"),
                ));
            }
            // Without a kind column every row is the schema's first kind
            // (an app's history is usually of one kind: its ratings, its
            // purchases).
            let kind = match (&kind, kinds.first()) {
                (Some(k), _) => k[r].clone().ok_or_else(|| bad("kind", "is null"))?,
                (None, Some(first)) => first.clone(),
                (None, None) => {
                    return Err(format!(
                        "{shown}: the schema declares no [events] kinds to read interactions as"
                    ))
                }
            };
            if !kinds.contains(&kind) {
                return Err(bad(
                    "kind",
                    &format!("\"{kind}\" is not one of events.kinds {kinds:?}"),
                ));
            }
            let timestamp = times[r].ok_or_else(|| bad("timestamp", "is null"))? as i64;
            out.push(Event::Interaction {
                id: ids
                    .as_ref()
                    .and_then(|ids| ids[r].clone())
                    .unwrap_or_else(|| at.to_string()),
                user_id,
                item_id,
                kind,
                value: values[r].filter(|v| v.is_finite()),
                timestamp,
                request_id: request_ids.as_ref().and_then(|r_| r_[r].clone()),
                attribution: None,
            });
        }
    }
    let at = |e: &Event| match e {
        Event::Interaction { timestamp, .. }
        | Event::Item { timestamp, .. }
        | Event::User { timestamp, .. } => *timestamp,
    };
    out.sort_by_key(at);
    Ok(out)
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
    let recent = match column("recent_items") {
        Some(a) => string_lists(a.as_ref())
            .ok_or_else(|| format!("{shown}: recent_items must hold lists of strings"))?,
        None => vec![Vec::new(); n],
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
        let mut session = Vec::with_capacity(recent[r].len());
        for id in &recent[r] {
            session.push(catalog.items.row(id).ok_or_else(|| {
                err(
                    "recent_items",
                    r,
                    format!("item \"{id}\" is not in the catalog"),
                )
            })?);
        }
        out.push(Row {
            item,
            user: users[r].as_deref().and_then(|u| catalog.users.row(u)),
            user_id: users[r].clone(),
            ctx: ctx.iter().map(|c| c[r]).collect(),
            at_ms: times[r].unwrap_or(now_ms),
            recent: session,
        });
    }
    Ok(())
}
