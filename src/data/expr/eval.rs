//! Evaluating a compiled plan, a column at a time: a value that depends
//! only on the user and the context is computed once per request
//! ([`scalar`]); one that depends on the item is computed for every
//! candidate row in a tight loop ([`column`]), with scratch columns from a
//! [`Pool`] so that nothing is allocated per request once it is warm.
//!
//! Missing is NaN, and every operation propagates it (a comparison or an
//! `if` with a missing operand is missing); `x / 0` and `ln(x ≤ 0)` are
//! missing too. Arithmetic is plain `f32`, in the order the expression
//! spells, and dot products sum left to right (see [`sequential_dot`]), so
//! the same plan gives the same bits offline and online.

use super::compile::{Bin, List, Num, Reach, Src, Un, Vector};
use crate::data::schema::Window;
use crate::data::table::Table;

/// Whose live state: an item (by row) or a user (by id: a user the
/// snapshot does not know may have events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who<'a> {
    Item(u32),
    User(&'a str),
}

/// Live state from events that `count()` and `recency()` read: served
/// from the events view, or replayed offline from historical interactions.
pub trait Live {
    /// Interactions the window's counter holds for `who` in its last
    /// `buckets` buckets, the one holding `now_ms` included.
    fn count(&self, who: Who<'_>, window: Window, now_ms: f64) -> u32;
    /// Epoch milliseconds of `who`'s last interaction of `kind` (an index
    /// into `events.kinds`; any kind when `None`).
    fn last(&self, who: Who<'_>, kind: Option<usize>) -> Option<i64>;
}

/// What a plan reads: the tables, the request's user row and context.
pub struct Env<'a> {
    pub items: &'a Table,
    pub users: &'a Table,
    pub user: Option<u32>,
    pub ctx: &'a [f32],
    /// The request's time, epoch milliseconds.
    pub now_ms: f64,
    /// Live state, when there is any.
    pub live: Option<&'a dyn Live>,
    /// The user's id, known or not (live state is by id).
    pub user_id: Option<&'a str>,
    /// `session.*`: the mean of the request's recent items' retrieval
    /// vectors, when it has any.
    pub session: Option<&'a [f32]>,
}

/// `count()` for `who`: 0 without live state (nothing happened).
fn count(env: &Env<'_>, who: Who<'_>, w: Window) -> f32 {
    env.live.map_or(0.0, |l| l.count(who, w, env.now_ms) as f32)
}

/// `recency()` for `who`: days since, never negative; missing when there
/// was none.
fn recency(env: &Env<'_>, who: Who<'_>, kind: Option<usize>) -> f32 {
    match env.live.and_then(|l| l.last(who, kind)) {
        Some(t) => ((env.now_ms - t as f64).max(0.0) / 86_400_000.0) as f32,
        None => f32::NAN,
    }
}

/// Reusable scratch columns.
#[derive(Default)]
pub struct Pool(Vec<Vec<f32>>);

impl Pool {
    fn take(&mut self, n: usize) -> Vec<f32> {
        let mut v = self.0.pop().unwrap_or_default();
        v.clear();
        v.resize(n, 0.0);
        v
    }

    fn give(&mut self, v: Vec<f32>) {
        self.0.push(v);
    }
}

#[inline]
fn flag(b: bool) -> f32 {
    b as u8 as f32
}

#[inline]
fn unary(op: Un, x: f32) -> f32 {
    match op {
        Un::Neg => -x,
        Un::Not => {
            if x.is_nan() {
                f32::NAN
            } else {
                flag(x == 0.0)
            }
        }
        Un::Abs => x.abs(),
        Un::Log1p => x.ln_1p(),
        Un::Ln => {
            if x > 0.0 {
                x.ln()
            } else {
                f32::NAN
            }
        }
        Un::Exp => x.exp(),
        Un::Sqrt => x.sqrt(),
        Un::IsMissing => flag(x.is_nan()),
    }
}

#[inline]
fn binary(op: Bin, a: f32, b: f32) -> f32 {
    let missing = a.is_nan() || b.is_nan();
    match op {
        Bin::Add => a + b,
        Bin::Sub => a - b,
        Bin::Mul => a * b,
        Bin::Div => {
            if b == 0.0 {
                f32::NAN
            } else {
                a / b
            }
        }
        Bin::Coalesce => {
            if a.is_nan() {
                b
            } else {
                a
            }
        }
        _ if missing => f32::NAN,
        Bin::Min => a.min(b),
        Bin::Max => a.max(b),
        Bin::Eq => flag(a == b),
        Bin::Ne => flag(a != b),
        Bin::Lt => flag(a < b),
        Bin::Le => flag(a <= b),
        Bin::Gt => flag(a > b),
        Bin::Ge => flag(a >= b),
        Bin::And => flag(a != 0.0 && b != 0.0),
        Bin::Or => flag(a != 0.0 || b != 0.0),
    }
}

#[inline]
fn choose(c: f32, a: f32, b: f32) -> f32 {
    if c.is_nan() {
        f32::NAN
    } else if c != 0.0 {
        a
    } else {
        b
    }
}

/// Left-to-right f32 accumulation with separate multiply and add (Rust
/// never fuses them): the order the training side uses, so results match
/// bit for bit.
#[inline]
pub fn sequential_dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |acc, (x, y)| acc + x * y)
}

fn table<'a>(env: &Env<'a>, src: Src) -> &'a Table {
    match src {
        Src::Item => env.items,
        Src::User => env.users,
    }
}

/// The row a request-scope read uses: the user's (none for cold start).
fn request_row(env: &Env<'_>, src: Src) -> Option<u32> {
    match src {
        Src::User => env.user,
        Src::Item => None,
    }
}

/// Whether list `l` of `row` holds `code`.
#[inline]
fn has(env: &Env<'_>, l: List, row: u32, code: f32) -> f32 {
    if code.is_nan() {
        return f32::NAN;
    }
    let c = code as u32;
    match table(env, l.src).mask(l.index, row) {
        Some(m) => flag(c < 64 && (m >> c) & 1 == 1),
        None => flag(list(env, l, row).binary_search(&c).is_ok()),
    }
}

fn list<'a>(env: &Env<'a>, l: List, row: u32) -> &'a [u32] {
    table(env, l.src).list(l.index, row)
}

/// A vector of one row, as a slice when stored dense; `None` for a
/// multi-hot (which has no storage) or a missing row.
fn dense<'a>(env: &Env<'a>, v: &Vector, row: u32) -> Option<&'a [f32]> {
    match *v {
        Vector::Row(src, at, len) => Some(table(env, src).values(row, at, len)),
        Vector::Retrieval(src, _) => Some(table(env, src).vector(row)),
        Vector::MultiHot(..) => None,
        Vector::Session(_) => env.session,
    }
}

/// Writes the 0/1 expansion of `v` at `row` into `buf` (any vector).
fn expand(env: &Env<'_>, v: &Vector, row: u32, buf: &mut Vec<f32>) {
    buf.clear();
    match v {
        Vector::MultiHot(l, dim) => {
            buf.resize(*dim, 0.0);
            for &c in list(env, *l, row) {
                if let Some(x) = buf.get_mut(c as usize) {
                    *x = 1.0;
                }
            }
        }
        _ => buf.extend_from_slice(dense(env, v, row).unwrap_or(&[])),
    }
}

/// The row of a vector for this request (user side) or item `row`.
fn row_of(env: &Env<'_>, v: &Vector, item: u32) -> Option<u32> {
    match v.scope() {
        Reach::Item => Some(item),
        _ => match v {
            Vector::Row(s, ..) | Vector::Retrieval(s, _) => request_row(env, *s),
            Vector::MultiHot(l, _) => request_row(env, l.src),
            Vector::Session(_) => env.session.map(|_| 0),
        },
    }
}

/// `f(a, b)` for one row, through scratch when a side has no storage.
fn pair(
    env: &Env<'_>,
    a: &Vector,
    b: &Vector,
    item: u32,
    scratch: &mut (Vec<f32>, Vec<f32>),
    f: impl Fn(&[f32], &[f32]) -> f32,
) -> f32 {
    let (Some(ra), Some(rb)) = (row_of(env, a, item), row_of(env, b, item)) else {
        return f32::NAN;
    };
    let x = match dense(env, a, ra) {
        Some(s) => s,
        None => {
            expand(env, a, ra, &mut scratch.0);
            &scratch.0
        }
    };
    let y = match dense(env, b, rb) {
        Some(s) => s,
        None => {
            expand(env, b, rb, &mut scratch.1);
            &scratch.1
        }
    };
    f(x, y)
}

fn cosine(x: &[f32], y: &[f32]) -> f32 {
    let d = sequential_dot(x, y);
    let n = sequential_dot(x, x).sqrt() * sequential_dot(y, y).sqrt();
    if n == 0.0 {
        f32::NAN
    } else {
        d / n
    }
}

fn sum(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |acc, v| acc + v)
}

fn index(x: &[f32], i: f32) -> f32 {
    if i.is_nan() || i < 0.0 {
        return f32::NAN;
    }
    x.get(i as usize).copied().unwrap_or(f32::NAN)
}

/// The value of a plan that does not depend on the item (its reach is
/// `Const` or `Request`).
pub fn scalar(n: &Num, env: &Env<'_>) -> f32 {
    let mut scratch = (Vec::new(), Vec::new());
    match n {
        Num::Const(c) => *c,
        Num::Read(src, at) => {
            request_row(env, *src).map_or(f32::NAN, |r| table(env, *src).scalar(r, *at))
        }
        Num::Ctx(i) => env.ctx.get(*i).copied().unwrap_or(f32::NAN),
        Num::Unary(op, a) => unary(*op, scalar(a, env)),
        Num::Binary(op, a, b) => binary(*op, scalar(a, env), scalar(b, env)),
        Num::If(c, a, b) => choose(scalar(c, env), scalar(a, env), scalar(b, env)),
        Num::Dot(a, b) => pair(env, a, b, 0, &mut scratch, sequential_dot),
        Num::Cosine(a, b) => pair(env, a, b, 0, &mut scratch, cosine),
        Num::Sum(v) => pair(env, v, v, 0, &mut scratch, |x, _| sum(x)),
        Num::Index(v, i) => {
            let i = scalar(i, env);
            pair(env, v, v, 0, &mut scratch, |x, _| index(x, i))
        }
        Num::Has(l, c) => {
            let c = scalar(c, env);
            match request_row(env, l.src) {
                Some(r) => has(env, *l, r, c),
                _ => f32::NAN,
            }
        }
        Num::Len(l) => request_row(env, l.src).map_or(f32::NAN, |r| list(env, *l, r).len() as f32),
        Num::DaysSince(src, i) => request_row(env, *src).map_or(f32::NAN, |r| {
            (env.now_ms - table(env, *src).time(*i, r)) as f32 / 86_400_000.0
        }),
        // An anonymous request has no user state: missing, not zero.
        Num::Count(_, w) => env
            .user_id
            .map_or(f32::NAN, |u| count(env, Who::User(u), *w)),
        Num::Recency(_, kind) => env
            .user_id
            .map_or(f32::NAN, |u| recency(env, Who::User(u), *kind)),
    }
}

/// Rows summed side by side in [`dots_by_row`].
const LANES: usize = 8;

/// `sequential_dot(query, row(item))` for every item, `LANES` items at a
/// time: each row is still summed left to right with a separate multiply
/// and add, so every value is bit for bit the one-row result, but `LANES`
/// independent chains of adds run side by side instead of one long chain
/// per row (on a 1M-item catalog that chain also held back the loads of the
/// next rows' uncached vectors).
fn dots_by_row<'a>(query: &[f32], items: &[u32], out: &mut [f32], row: impl Fn(u32) -> &'a [f32]) {
    let mut chunks = items.chunks_exact(LANES);
    let mut o = 0;
    for chunk in &mut chunks {
        let rows: [&[f32]; LANES] = std::array::from_fn(|k| row(chunk[k]));
        let len = rows.iter().fold(query.len(), |n, r| n.min(r.len()));
        let mut acc = [0.0f32; LANES];
        for (d, &q) in query[..len].iter().enumerate() {
            for (a, r) in acc.iter_mut().zip(&rows) {
                *a += q * r[d];
            }
        }
        out[o..o + LANES].copy_from_slice(&acc);
        o += LANES;
    }
    for &i in chunks.remainder() {
        out[o] = sequential_dot(query, row(i));
        o += 1;
    }
}

/// The value of `n` for every row of `items`, into `out` (same length).
pub fn column(n: &Num, env: &Env<'_>, items: &[u32], out: &mut [f32], pool: &mut Pool) {
    if n.scope() != Reach::Item {
        out.fill(scalar(n, env));
        return;
    }
    match n {
        Num::Read(src, at) => table(env, *src).scalars(items, *at, out),
        Num::Unary(op, a) => {
            column(a, env, items, out, pool);
            let op = *op;
            for o in out.iter_mut() {
                *o = unary(op, *o);
            }
        }
        Num::Binary(op, a, b) => {
            let op = *op;
            match (a.scope() == Reach::Item, b.scope() == Reach::Item) {
                (true, false) => {
                    column(a, env, items, out, pool);
                    let y = scalar(b, env);
                    for o in out.iter_mut() {
                        *o = binary(op, *o, y);
                    }
                }
                (false, true) => {
                    column(b, env, items, out, pool);
                    let x = scalar(a, env);
                    for o in out.iter_mut() {
                        *o = binary(op, x, *o);
                    }
                }
                _ => {
                    column(a, env, items, out, pool);
                    let mut tmp = pool.take(items.len());
                    column(b, env, items, &mut tmp, pool);
                    for (o, y) in out.iter_mut().zip(&tmp) {
                        *o = binary(op, *o, *y);
                    }
                    pool.give(tmp);
                }
            }
        }
        Num::If(c, a, b) => {
            column(c, env, items, out, pool);
            let mut x = pool.take(items.len());
            let mut y = pool.take(items.len());
            column(a, env, items, &mut x, pool);
            column(b, env, items, &mut y, pool);
            for ((o, a), b) in out.iter_mut().zip(&x).zip(&y) {
                *o = choose(*o, *a, *b);
            }
            pool.give(x);
            pool.give(y);
        }
        Num::Dot(a, b) => dot_column(a, b, env, items, out),
        Num::Cosine(a, b) => per_row(env, a, b, items, out, cosine),
        Num::Sum(v) => per_row(env, v, v, items, out, |x, _| sum(x)),
        Num::Index(v, i) => {
            let mut idx = pool.take(items.len());
            column(i, env, items, &mut idx, pool);
            let mut scratch = (Vec::new(), Vec::new());
            for ((o, &r), &i) in out.iter_mut().zip(items).zip(&idx) {
                *o = pair(env, v, v, r, &mut scratch, |x, _| index(x, i));
            }
            pool.give(idx);
        }
        // One code for every row (a name, a request-side value): read
        // straight from the lists' bit masks when they are kept.
        Num::Has(l, c)
            if c.scope() != Reach::Item && {
                let code = scalar(c, env);
                !code.is_nan()
                    && code >= 0.0
                    && table(env, l.src).mask_has(l.index, items, code as u32, out)
            } => {}
        Num::Has(l, c) => {
            let mut codes = pool.take(items.len());
            column(c, env, items, &mut codes, pool);
            for ((o, &r), &c) in out.iter_mut().zip(items).zip(&codes) {
                *o = has(env, *l, r, c);
            }
            pool.give(codes);
        }
        Num::Len(l) => {
            for (o, &r) in out.iter_mut().zip(items) {
                *o = list(env, *l, r).len() as f32;
            }
        }
        Num::DaysSince(src, i) => {
            let t = table(env, *src);
            for (o, &r) in out.iter_mut().zip(items) {
                *o = (env.now_ms - t.time(*i, r)) as f32 / 86_400_000.0;
            }
        }
        Num::Count(_, w) => {
            for (o, &r) in out.iter_mut().zip(items) {
                *o = count(env, Who::Item(r), *w);
            }
        }
        Num::Recency(_, kind) => {
            for (o, &r) in out.iter_mut().zip(items) {
                *o = recency(env, Who::Item(r), *kind);
            }
        }
        Num::Const(_) | Num::Ctx(_) => unreachable!("request scope, handled above"),
    }
}

fn per_row(
    env: &Env<'_>,
    a: &Vector,
    b: &Vector,
    items: &[u32],
    out: &mut [f32],
    f: impl Fn(&[f32], &[f32]) -> f32 + Copy,
) {
    let mut scratch = (Vec::new(), Vec::new());
    for (o, &r) in out.iter_mut().zip(items) {
        *o = pair(env, a, b, r, &mut scratch, f);
    }
}

/// Dot products with their fast shapes: a request-side vector against the
/// items' stored vectors (side by side, [`dots_by_row`]) or against their
/// multi-hot lists (a sum over the listed codes, in code order — the same
/// bits as the dense 0/1 product, since adding `x · 0` changes nothing).
fn dot_column(a: &Vector, b: &Vector, env: &Env<'_>, items: &[u32], out: &mut [f32]) {
    let (q, item_side) = match (a.scope(), b.scope()) {
        (Reach::Item, Reach::Item) => return per_row(env, a, b, items, out, sequential_dot),
        (Reach::Item, _) => (b, a),
        _ => (a, b),
    };
    let Some(qrow) = row_of(env, q, 0) else {
        out.fill(f32::NAN);
        return;
    };
    let Some(query) = dense(env, q, qrow) else {
        return per_row(env, a, b, items, out, sequential_dot);
    };
    match *item_side {
        Vector::Row(src, at, len) => {
            let t = table(env, src);
            dots_by_row(query, items, out, |r| t.values(r, at, len));
        }
        Vector::Retrieval(src, _) => {
            let t = table(env, src);
            dots_by_row(query, items, out, |r| t.vector(r));
        }
        Vector::MultiHot(l, _) if table(env, l.src).has_mask(l.index) => {
            let t = table(env, l.src);
            for (o, &r) in out.iter_mut().zip(items) {
                // Set bits in ascending order: the codes, sorted.
                let mut m = t.mask(l.index, r).unwrap_or(0);
                let mut acc = 0.0f32;
                while m != 0 {
                    acc += query
                        .get(m.trailing_zeros() as usize)
                        .copied()
                        .unwrap_or(0.0);
                    m &= m - 1;
                }
                *o = acc;
            }
        }
        Vector::MultiHot(l, _) => {
            for (o, &r) in out.iter_mut().zip(items) {
                *o = list(env, l, r).iter().fold(0.0f32, |acc, &c| {
                    acc + query.get(c as usize).copied().unwrap_or(0.0)
                });
            }
        }
        Vector::Session(_) => unreachable!("a session vector is request-side"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_dots_are_bit_for_bit_the_sequential_ones() {
        // Values of mixed magnitude and sign, where summation order matters.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 10f32.powi((x % 7) as i32 - 3)
        };
        let dim = 64;
        let query: Vec<f32> = (0..dim).map(|_| next()).collect();
        let table: Vec<f32> = (0..40 * dim).map(|_| next()).collect();
        let row = |i: u32| &table[i as usize * dim..(i as usize + 1) * dim];
        for n in 0..=20usize {
            let items: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % 40).collect();
            let mut got = vec![0.0; n];
            dots_by_row(&query, &items, &mut got, row);
            let want: Vec<f32> = items
                .iter()
                .map(|&i| sequential_dot(&query, row(i)))
                .collect();
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{n} rows"
            );
        }
    }

    #[test]
    fn a_sparse_sum_over_codes_is_the_dense_dot_bit_for_bit() {
        let profile = [0.1f32, -0.0, 0.3333333, 1e-8, 0.25, -0.7];
        for codes in [
            vec![],
            vec![1],
            vec![0, 2, 3],
            vec![1, 4, 5],
            vec![0, 1, 2, 3, 4, 5],
        ] {
            let mut dense = [0.0f32; 6];
            for &c in &codes {
                dense[c] = 1.0;
            }
            let sparse = codes.iter().fold(0.0f32, |acc, &c| acc + profile[c]);
            assert_eq!(
                sparse.to_bits(),
                sequential_dot(&profile, &dense).to_bits(),
                "{codes:?}"
            );
        }
    }

    #[test]
    fn missing_propagates_and_errors_become_missing() {
        let nan = f32::NAN;
        assert!(binary(Bin::Add, nan, 1.0).is_nan());
        assert!(binary(Bin::Eq, nan, nan).is_nan());
        assert!(binary(Bin::Div, 1.0, 0.0).is_nan());
        assert!(
            binary(Bin::Min, nan, 1.0).is_nan(),
            "min does not hide a missing value"
        );
        assert_eq!(binary(Bin::Coalesce, nan, 2.0), 2.0);
        assert_eq!(unary(Un::IsMissing, nan), 1.0);
        assert!(unary(Un::Ln, 0.0).is_nan());
        assert!(choose(nan, 1.0, 2.0).is_nan());
        assert_eq!(choose(0.0, 1.0, 2.0), 2.0);
        assert!(index(&[1.0, 2.0], 2.0).is_nan());
        assert_eq!(index(&[1.0, 2.0], 1.0), 2.0);
    }
}
