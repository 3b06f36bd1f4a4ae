//! A model's declared features: each input column is a named expression,
//! compiled once when the model version loads and assembled here into the
//! `[rows, features]` matrix, one column at a time, into a reused buffer.
//!
//! In the model's `config.toml`:
//!
//! ```toml
//! [input]
//! name = "features"
//! features = [
//!   { name = "user_item_dot", expr = "dot(user.embedding, item.embedding)" },
//!   { name = "price_band", expr = "log1p(item.price)", default = 0.0 },
//! ]
//! ```
//!
//! A row whose value is missing (NaN, or not finite) takes the feature's
//! `default` (0 unless given), and is counted, per feature, for coverage.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use super::expr::compile::LiveReads;
use super::expr::eval::{column, scalar, Env, Live, Pool};
use super::expr::{self, Num, Reach, Src, Tables};
use super::table::Table;

/// One declared input column.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureDecl {
    pub name: String,
    pub expr: String,
    #[serde(default)]
    pub default: f32,
}

/// Who is being ranked for, resolved for serving.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    /// A known user's row; `None` on the cold-start path.
    pub user: Option<u32>,
    /// Every declared context value, defaults applied (NaN = missing).
    pub ctx: Vec<f32>,
    /// The request's time (epoch milliseconds): "now", or a historical
    /// row's timestamp offline.
    pub now_ms: f64,
    /// The request's user id, known to the snapshot or not: live state
    /// (`count(user, …)`) is by id.
    pub user_id: Option<String>,
    /// `session.*`: the mean of the retrieval vectors of the request's
    /// recent items ([`crate::pipeline::stages::session_vector`]).
    pub session: Option<Vec<f32>>,
}

/// What assembly reads: the snapshot's tables and, when there is any, live
/// state from events.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    pub items: &'a Table,
    pub users: &'a Table,
    pub live: Option<&'a dyn Live>,
}

/// A model's features, compiled against the catalog.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    pub names: Vec<String>,
    plans: Vec<Num>,
    defaults: Vec<f32>,
    /// Context positions read by any feature, sorted: with the user, the
    /// item and the model version, they fix every value (score cache keys)
    /// — with the live state in `live`.
    pub context_reads: Vec<usize>,
    /// What of live state (counters, recency) the features read.
    pub live: LiveReads,
    /// Whether a feature reads `session.*` (the request's recent items).
    pub reads_session: bool,
    /// Item columns read straight from each item's row, in one pass.
    row_reads: RowReads,
}

/// Item features that are one cell of the item's row: a field, or whether
/// a list holds a constant category (a bit of the list's mask, when the
/// catalog keeps it as one). Assembled in one pass over the rows — each
/// item's row is fetched once and its cells written side by side — instead
/// of a pass per column (the shipped re-ranker has 27 of its 40 this way).
#[derive(Debug, Clone, Default, PartialEq)]
struct RowReads {
    /// `(feature, row-table offset)`.
    values: Vec<(usize, usize)>,
    /// `(feature, list index, code)`.
    bits: Vec<(usize, usize, u32)>,
}

impl RowReads {
    fn of(plans: &[Num]) -> RowReads {
        let mut reads = RowReads::default();
        for (j, plan) in plans.iter().enumerate() {
            match plan {
                Num::Read(Src::Item, at) => reads.values.push((j, *at)),
                Num::Has(l, code) if l.src == Src::Item => {
                    if let Num::Const(c) = **code {
                        if (0.0..64.0).contains(&c) && c.fract() == 0.0 {
                            reads.bits.push((j, l.index, c as u32));
                        }
                    }
                }
                _ => {}
            }
        }
        reads
    }
}

thread_local! {
    /// Scratch columns, reused by every assembly on this thread, and which
    /// features the one-pass row reads wrote.
    static SCRATCH: RefCell<(Pool, Vec<f32>, Vec<bool>)> =
        RefCell::new((Pool::default(), Vec::new(), Vec::new()));
}

impl FeatureSet {
    /// Compiles every declaration; an error names the feature and the place.
    pub fn compile(decls: &[FeatureDecl], tables: &Tables<'_>) -> Result<FeatureSet, String> {
        let mut plans = Vec::with_capacity(decls.len());
        let mut context_reads = Vec::new();
        let mut live = LiveReads::default();
        for (i, d) in decls.iter().enumerate() {
            if decls[..i].iter().any(|e| e.name == d.name) {
                return Err(format!("feature \"{}\" is declared twice", d.name));
            }
            if !d.default.is_finite() {
                return Err(format!("feature \"{}\": default must be finite", d.name));
            }
            let plan =
                expr::plan(&d.expr, tables).map_err(|e| format!("feature \"{}\": {e}", d.name))?;
            plan.context_reads(&mut context_reads);
            plan.live_reads(&mut live);
            plans.push(plan);
        }
        context_reads.sort_unstable();
        context_reads.dedup();
        Ok(FeatureSet {
            names: decls.iter().map(|d| d.name.clone()).collect(),
            defaults: decls.iter().map(|d| d.default).collect(),
            reads_session: plans.iter().any(Num::reads_session),
            row_reads: RowReads::of(&plans),
            plans,
            context_reads,
            live,
        })
    }

    pub fn width(&self) -> usize {
        self.plans.len()
    }

    /// Writes one row per item into `out` (resized) and adds, per feature,
    /// how many rows took its default into `missing` (`width()` long).
    pub fn assemble(
        &self,
        src: &Sources<'_>,
        subject: &Subject,
        rows: &[u32],
        out: &mut Vec<f32>,
        missing: &mut [u32],
    ) {
        let width = self.width();
        out.clear();
        out.resize(rows.len() * width, 0.0);
        let env = Env {
            items: src.items,
            users: src.users,
            user: subject.user,
            ctx: &subject.ctx,
            now_ms: subject.now_ms,
            live: src.live,
            user_id: subject.user_id.as_deref(),
            session: subject.session.as_deref(),
        };
        SCRATCH.with(|scratch| {
            let (pool, col, done) = &mut *scratch.borrow_mut();
            self.assemble_row_reads(src.items, rows, out, missing, done);
            for (j, plan) in self.plans.iter().enumerate() {
                if done[j] {
                    continue;
                }
                let default = self.defaults[j];
                if plan.scope() != Reach::Item {
                    let mut v = scalar(plan, &env);
                    if !v.is_finite() {
                        v = default;
                        missing[j] += rows.len() as u32;
                    }
                    for r in 0..rows.len() {
                        out[r * width + j] = v;
                    }
                    continue;
                }
                col.clear();
                col.resize(rows.len(), 0.0);
                column(plan, &env, rows, col, pool);
                for (r, v) in col.iter().enumerate() {
                    out[r * width + j] = if v.is_finite() {
                        *v
                    } else {
                        missing[j] += 1;
                        default
                    };
                }
            }
        });
    }

    /// The [`RowReads`] columns, into `out`; `done` says which were written
    /// (a bit whose list the catalog does not keep as a mask is left to
    /// the per-column path).
    fn assemble_row_reads(
        &self,
        items: &Table,
        rows: &[u32],
        out: &mut [f32],
        missing: &mut [u32],
        done: &mut Vec<bool>,
    ) {
        let width = self.width();
        done.clear();
        done.resize(width, false);
        let reads = &self.row_reads;
        if reads.values.len() + reads.bits.len() < 2 {
            return;
        }
        for &(j, _) in &reads.values {
            done[j] = true;
        }
        // `(feature, row-table offset, bit)` of each bit read here.
        let mut bits = [(0usize, 0usize, 0u32); 64];
        let mut n_bits = 0;
        for &(j, list, code) in &reads.bits {
            if let (Some(at), true) = (items.mask_slot(list), n_bits < bits.len()) {
                bits[n_bits] = (j, at + (code / 32) as usize, code % 32);
                n_bits += 1;
                done[j] = true;
            }
        }
        let bits = &bits[..n_bits];
        let n = items.width();
        for (r, &item) in rows.iter().enumerate() {
            let cells = items.values(item, 0, n);
            let line = &mut out[r * width..(r + 1) * width];
            for &(j, at) in &reads.values {
                let v = cells[at];
                line[j] = if v.is_finite() {
                    v
                } else {
                    missing[j] += 1;
                    self.defaults[j]
                };
            }
            for &(j, at, bit) in bits {
                line[j] = (cells[at].to_bits() >> bit & 1) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ids::Ids;
    use crate::data::schema::Schema;
    use crate::data::table::{Column, Csr};

    struct Fixture {
        schema: Schema,
        items: Table,
        users: Table,
    }

    fn fixture() -> Fixture {
        let schema = Schema::parse(
            r#"
            [vocabularies]
            job = ["cook", "pilot", "poet"]
            tag = ["a", "b", "c"]
            [items]
            fields.embedding = { type = "vector", dim = 2 }
            fields.price = { type = "number" }
            fields.lift = { type = "vector", by = "job" }
            fields.tags = { type = "categories", vocabulary = "tag" }
            [users]
            fields.embedding = { type = "vector", dim = 2 }
            fields.age = { type = "number" }
            fields.job = { type = "category", vocabulary = "job" }
            fields.taste = { type = "vector", by = "tag" }
            [context]
            fields.age = { type = "number" }
            fields.job = { type = "category", vocabulary = "job", unknown = "missing" }
            [retrieval]
            item_vector = "embedding"
            user_vector = "embedding"
            "#,
        )
        .unwrap();
        let items = Table::build(
            &schema.items,
            Ids::new((0..3).map(|i| format!("i{i}")).collect(), "items").unwrap(),
            vec![
                Column::Vectors(vec![1.0, 0.0, 0.6, 0.8, 0.0, 1.0]),
                Column::Scalars(vec![10.0, 0.0, f32::NAN]),
                Column::Vectors(vec![1.0, 2.0, 3.0, 0.5, 0.5, 0.5, 9.0, 8.0, 7.0]),
                Column::Lists(Csr {
                    offsets: vec![0, 2, 2, 3],
                    values: vec![0, 2, 1],
                }),
            ],
            Some("embedding"),
        );
        let users = Table::build(
            &schema.users,
            Ids::new(vec!["u".into()], "users").unwrap(),
            vec![
                Column::Vectors(vec![0.6, 0.8]),
                Column::Scalars(vec![30.0]),
                Column::Scalars(vec![2.0]),
                Column::Vectors(vec![0.5, 0.25, 0.125]),
            ],
            Some("embedding"),
        );
        Fixture {
            schema,
            items,
            users,
        }
    }

    /// Features `f0`, `f1`, … with these expressions and defaults.
    fn compile(f: &Fixture, decls: &[(&str, f32)]) -> FeatureSet {
        let decls: Vec<FeatureDecl> = decls
            .iter()
            .enumerate()
            .map(|(i, (e, d))| FeatureDecl {
                name: format!("f{i}"),
                expr: e.to_string(),
                default: *d,
            })
            .collect();
        let tables = Tables {
            schema: &f.schema,
            items: &f.items,
            users: &f.users,
        };
        FeatureSet::compile(&decls, &tables).unwrap()
    }

    fn assemble(f: &Fixture, decls: &[(&str, f32)], subject: &Subject) -> (Vec<f32>, Vec<u32>) {
        let set = compile(f, decls);
        let (mut out, mut missing) = (Vec::new(), vec![0; set.width()]);
        let src = Sources {
            items: &f.items,
            users: &f.users,
            live: None,
        };
        set.assemble(&src, subject, &[0, 1, 2], &mut out, &mut missing);
        (out, missing)
    }

    /// The one-pass row reads write what the per-column path writes, with
    /// the same defaults and missing counts.
    #[test]
    fn one_pass_row_reads_match_the_column_path() {
        let f = fixture();
        let fused = compile(
            &f,
            &[
                ("item.price", 7.0),
                ("has(item.tags, 'a')", 0.0),
                ("user.age", 0.0),
                ("has(item.tags, 'c')", 0.0),
                ("log1p(item.price)", -1.0),
                ("has(item.tags, 'b')", 0.0),
            ],
        );
        assert_eq!(fused.row_reads.values.len(), 1);
        assert_eq!(fused.row_reads.bits.len(), 3);
        assert!(f.items.mask_slot(0).is_some(), "tags are kept as masks");
        let per_column = FeatureSet {
            row_reads: RowReads::default(),
            ..fused.clone()
        };
        let subject = Subject {
            user: Some(0),
            ..Subject::default()
        };
        let src = Sources {
            items: &f.items,
            users: &f.users,
            live: None,
        };
        let rows = [2, 0, 1, 0];
        let run = |set: &FeatureSet| {
            let (mut out, mut missing) = (Vec::new(), vec![0; set.width()]);
            set.assemble(&src, &subject, &rows, &mut out, &mut missing);
            (out, missing)
        };
        let (out, missing) = run(&fused);
        assert_eq!(
            (out.clone(), missing.clone()),
            run(&per_column),
            "the fused and per-column matrices differ"
        );
        // Item 2: no price (the default, counted), tag b only.
        assert_eq!(&out[..6], &[7.0, 0.0, 30.0, 0.0, -1.0, 1.0]);
        // Item 0: tags a and c.
        assert_eq!(&out[6..12], &[10.0, 1.0, 30.0, 1.0, 10f32.ln_1p(), 0.0]);
        assert_eq!(missing, vec![1, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn declared_features_compute_what_they_say() {
        let f = fixture();
        let known = Subject {
            user: Some(0),
            ctx: vec![f32::NAN, 1.0],
            now_ms: 0.0,
            user_id: None,
            session: None,
        };
        let (out, missing) = assemble(
            &f,
            &[
                ("dot(user.embedding, item.embedding)", 0.0),
                ("item.lift[user.job]", 1.0),
                ("dot(user.taste, multihot(item.tags))", 0.0),
                ("log1p(item.price) * 2", -1.0),
                ("if(user.job == 'poet', abs(user.age - item.price), 0)", 0.0),
                ("has(item.tags, 'c') + len(item.tags)", 0.0),
                ("item.lift['pilot']", 0.0),
            ],
            &known,
        );
        let w = 7;
        let row = |r: usize| &out[r * w..(r + 1) * w];
        assert_eq!(row(0)[0], 0.6);
        assert_eq!(row(1)[0], 0.6 * 0.6 + 0.8 * 0.8);
        assert_eq!([row(0)[1], row(1)[1], row(2)[1]], [3.0, 0.5, 7.0]);
        assert_eq!([row(0)[2], row(1)[2], row(2)[2]], [0.5 + 0.125, 0.0, 0.25]);
        assert_eq!(row(0)[3], 10f32.ln_1p() * 2.0);
        assert_eq!(row(2)[3], -1.0, "a missing price takes the default");
        assert_eq!([row(0)[4], row(1)[4]], [20.0, 30.0]);
        assert_eq!([row(0)[5], row(1)[5], row(2)[5]], [3.0, 0.0, 1.0]);
        assert_eq!(row(0)[6], 2.0);
        assert_eq!(missing, vec![0, 0, 0, 1, 1, 0, 0]);

        // Cold start: user fields are missing and take defaults; the
        // context's job stands in where a feature says so.
        let cold = Subject {
            user: None,
            ctx: vec![25.0, 0.0],
            now_ms: 0.0,
            user_id: None,
            session: None,
        };
        let (out, missing) = assemble(
            &f,
            &[
                ("dot(user.embedding, item.embedding)", 0.0),
                ("item.lift[coalesce(user.job, ctx.job)]", 1.0),
                ("abs(ctx.age - item.price)", 0.0),
                ("is_missing(user.age)", 0.0),
            ],
            &cold,
        );
        assert_eq!(&out[..4], &[0.0, 1.0, 15.0, 1.0]);
        assert_eq!(missing, vec![3, 0, 1, 0]);

        // A session (the request's recent items) is a vector like the
        // user's, per request; without one it is missing.
        let session = [
            ("dot(session.embedding, item.embedding)", -1.0),
            ("cosine(session.embedding, item.embedding)", -1.0),
        ];
        let with = Subject {
            session: Some(vec![0.5, 0.0]),
            ..cold.clone()
        };
        let (out, missing) = assemble(&f, &session, &with);
        assert_eq!(out, vec![0.5, 1.0, 0.3, 0.6, 0.0, 0.0]);
        assert_eq!(missing, vec![0, 0]);
        let (out, missing) = assemble(&f, &session, &cold);
        assert_eq!(out, vec![-1.0; 6]);
        assert_eq!(missing, vec![3, 3]);
    }

    #[test]
    fn mistakes_are_compile_errors_naming_feature_and_place() {
        let f = fixture();
        let tables = Tables {
            schema: &f.schema,
            items: &f.items,
            users: &f.users,
        };
        for (expr, want) in [
            (
                "item.prise + 1",
                "items have no field \"prise\", at character 1",
            ),
            (
                "user.job * 2",
                "this is a category of \"job\", not a number",
            ),
            ("item.price / 0", "division by zero, at character 14"),
            (
                "dot(user.embedding, user.taste)",
                "dot() of vectors of 2 and 3 values",
            ),
            (
                "item.lift[item.tags]",
                "a vector is indexed by a constant position or a category of \"job\"",
            ),
            (
                "user.job == 'sailor'",
                "'sailor' is not in vocabulary \"job\", at character 13",
            ),
            ("user.taste", "a feature is a number, this is a vector of 3"),
            (
                "count(item, kind = 'click')",
                "kind 'click' is not one of the schema's events.kinds",
            ),
            ("count(item.price)", "count() takes item or user"),
            (
                "recency(user, last = '1d')",
                "recency() takes no named argument \"last\"",
            ),
            ("frobnicate(1)", "no function \"frobnicate\""),
            ("ctx.device", "the context has no field \"device\""),
            (
                "dot(session.taste, item.embedding)",
                "a session holds the mean of its items' retrieval vector only: session.embedding",
            ),
            ("item.price +", "the expression ends too early"),
        ] {
            let decls = [FeatureDecl {
                name: "bad".into(),
                expr: expr.into(),
                default: 0.0,
            }];
            let e = FeatureSet::compile(&decls, &tables).unwrap_err();
            assert!(e.starts_with("feature \"bad\": "), "{e}");
            assert!(e.contains(want), "{expr}: {e}");
        }
    }
}
