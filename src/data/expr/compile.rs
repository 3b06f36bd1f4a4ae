//! Type-checking a parsed expression against the schema and the loaded
//! tables, into a plan ([`Num`]) that reads fields by their offsets. Every
//! mistake is caught here, once, at start or reload: an unknown field, a
//! category used as a number, vectors of different lengths, a category
//! value its vocabulary lacks, a division by the constant 0.

use std::sync::Arc;

use super::parse::{err, Ast, BinOp, Error, Expr, Scope};
use crate::data::schema::{FieldType, Schema, Vocabulary, Window};
use crate::data::table::{Slot, Table};

/// Items or users: the tables a plan reads rows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    Item,
    User,
}

/// Elementwise operations on one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Un {
    Neg,
    Not,
    Abs,
    Log1p,
    Ln,
    Exp,
    Sqrt,
    IsMissing,
}

/// Elementwise operations on two values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Coalesce,
}

/// A number per row (a category is its code); NaN is "missing".
#[derive(Debug, Clone, PartialEq)]
pub enum Num {
    Const(f32),
    /// A scalar at this offset of the row table.
    Read(Src, usize),
    /// A context value, by position.
    Ctx(usize),
    Unary(Un, Box<Num>),
    Binary(Bin, Box<Num>, Box<Num>),
    If(Box<Num>, Box<Num>, Box<Num>),
    Dot(Vector, Vector),
    Cosine(Vector, Vector),
    Sum(Vector),
    /// One element of a vector; the index is a category code (or constant).
    Index(Vector, Box<Num>),
    /// 1 when the list holds the code.
    Has(List, Box<Num>),
    Len(List),
    DaysSince(Src, usize),
    /// A windowed counter of the item or the user (live state).
    Count(Src, Window),
    /// Days since the item's or user's last interaction of a kind (by its
    /// index in `events.kinds`; any kind when `None`) (live state).
    Recency(Src, Option<usize>),
}

/// What of live state a feature set reads: whether anything of the items'
/// or the user's, and which counters (whose buckets move with time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveReads {
    pub item: bool,
    pub user: bool,
    pub counters: Vec<usize>,
}

/// A vector per row.
#[derive(Debug, Clone, PartialEq)]
pub enum Vector {
    /// `len` values at this offset of the row table.
    Row(Src, usize, usize),
    /// The table's retrieval vector (`dim` values).
    Retrieval(Src, usize),
    /// A list of categories as 0/1 over its vocabulary (`dim` values).
    MultiHot(List, usize),
    /// `session.<item vector>`: the mean of the request's recent items'
    /// retrieval vectors (`dim` values), the query a retrieval from them
    /// searches with; missing without recent items.
    Session(usize),
}

/// A CSR list of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct List {
    pub src: Src,
    pub index: usize,
}

/// When a value can change: never, per request (user and context only),
/// or per candidate item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    Const,
    Request,
    Item,
}

fn src_scope(s: Src) -> Reach {
    match s {
        Src::Item => Reach::Item,
        Src::User => Reach::Request,
    }
}

impl Vector {
    pub fn scope(&self) -> Reach {
        match self {
            Vector::Row(s, ..) | Vector::Retrieval(s, _) => src_scope(*s),
            Vector::MultiHot(l, _) => src_scope(l.src),
            Vector::Session(_) => Reach::Request,
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            Vector::Row(_, _, len) => *len,
            Vector::Retrieval(_, d) | Vector::MultiHot(_, d) | Vector::Session(d) => *d,
        }
    }
}

impl Num {
    /// The widest scope of what the value reads.
    pub fn scope(&self) -> Reach {
        match self {
            Num::Const(_) => Reach::Const,
            Num::Read(s, _) | Num::DaysSince(s, _) | Num::Count(s, _) | Num::Recency(s, _) => {
                src_scope(*s)
            }
            Num::Ctx(_) => Reach::Request,
            Num::Unary(_, a) => a.scope(),
            Num::Binary(_, a, b) => a.scope().max(b.scope()),
            Num::If(c, a, b) => c.scope().max(a.scope()).max(b.scope()),
            Num::Dot(a, b) | Num::Cosine(a, b) => a.scope().max(b.scope()),
            Num::Sum(v) => v.scope(),
            Num::Index(v, i) => v.scope().max(i.scope()),
            Num::Has(l, c) => src_scope(l.src).max(c.scope()),
            Num::Len(l) => src_scope(l.src),
        }
    }

    /// Whether the value reads `session.*` (the request's recent items,
    /// which no score cache key holds).
    pub fn reads_session(&self) -> bool {
        let v = |x: &Vector| matches!(x, Vector::Session(_));
        match self {
            Num::Dot(a, b) | Num::Cosine(a, b) => v(a) || v(b),
            Num::Sum(x) => v(x),
            Num::Index(x, i) => v(x) || i.reads_session(),
            Num::Unary(_, a) | Num::Has(_, a) => a.reads_session(),
            Num::Binary(_, a, b) => a.reads_session() || b.reads_session(),
            Num::If(c, a, b) => c.reads_session() || a.reads_session() || b.reads_session(),
            _ => false,
        }
    }

    /// Adds what of live state the value reads to `out` (for cache keys).
    pub fn live_reads(&self, out: &mut LiveReads) {
        let mut mark = |s: &Src| match s {
            Src::Item => out.item = true,
            Src::User => out.user = true,
        };
        match self {
            Num::Count(s, w) => {
                mark(s);
                if !out.counters.contains(&w.counter) {
                    out.counters.push(w.counter);
                }
            }
            Num::Recency(s, _) => mark(s),
            Num::Unary(_, a) | Num::Index(_, a) | Num::Has(_, a) => a.live_reads(out),
            Num::Binary(_, a, b) => {
                a.live_reads(out);
                b.live_reads(out);
            }
            Num::If(c, a, b) => {
                c.live_reads(out);
                a.live_reads(out);
                b.live_reads(out);
            }
            _ => {}
        }
    }

    /// Context positions the value reads (for cache keys).
    pub fn context_reads(&self, out: &mut Vec<usize>) {
        match self {
            Num::Ctx(i) => out.push(*i),
            Num::Unary(_, a) | Num::Index(_, a) | Num::Has(_, a) => a.context_reads(out),
            Num::Binary(_, a, b) => {
                a.context_reads(out);
                b.context_reads(out);
            }
            Num::If(c, a, b) => {
                c.context_reads(out);
                a.context_reads(out);
                b.context_reads(out);
            }
            _ => {}
        }
    }
}

/// A typed value during compilation.
enum Typed {
    Num(Num),
    Cat(Num, Arc<Vocabulary>),
    Cats(List, Arc<Vocabulary>),
    Items(List),
    Vector(Vector, Option<Arc<Vocabulary>>),
    Time(Src, usize),
    Str(String),
}

impl Typed {
    fn describe(&self) -> String {
        match self {
            Typed::Num(_) => "a number".into(),
            Typed::Cat(_, v) => format!("a category of \"{}\"", v.name),
            Typed::Cats(_, v) => format!("a list of categories of \"{}\"", v.name),
            Typed::Items(_) => "a list of items".into(),
            Typed::Vector(v, _) => format!("a vector of {}", v.dim()),
            Typed::Time(..) => "a timestamp".into(),
            Typed::Str(s) => format!("the text '{s}'"),
        }
    }
}

/// What a plan compiles against.
pub struct Tables<'a> {
    pub schema: &'a Schema,
    pub items: &'a Table,
    pub users: &'a Table,
}

/// Compiles a parsed expression into a numeric plan.
pub fn compile(e: &Expr, t: &Tables<'_>) -> Result<Num, Error> {
    match typed(e, t)? {
        Typed::Num(n) => Ok(n),
        other => err(
            e.pos,
            format!(
                "a feature is a number, this is {}{}",
                other.describe(),
                match other {
                    Typed::Cat(..) => " (compare it, x == 'value', or take its index with code(x))",
                    Typed::Vector(..) => " (reduce it with dot, cosine, sum or [index])",
                    _ => "",
                }
            ),
        ),
    }
}

fn number(e: &Expr, t: &Tables<'_>) -> Result<Num, Error> {
    match typed(e, t)? {
        Typed::Num(n) => Ok(n),
        Typed::Cat(_, v) => err(
            e.pos,
            format!(
                "this is a category of \"{}\", not a number (use code(...) for its index)",
                v.name
            ),
        ),
        other => err(
            e.pos,
            format!("expected a number, this is {}", other.describe()),
        ),
    }
}

fn vector(e: &Expr, t: &Tables<'_>) -> Result<(Vector, Option<Arc<Vocabulary>>), Error> {
    match typed(e, t)? {
        Typed::Vector(v, by) => Ok((v, by)),
        other => err(
            e.pos,
            format!("expected a vector, this is {}", other.describe()),
        ),
    }
}

fn field(scope: Scope, name: &str, pos: usize, t: &Tables<'_>) -> Result<Typed, Error> {
    let (src, entity, table, what) = match scope {
        Scope::Item => (Src::Item, &t.schema.items, t.items, "items"),
        Scope::User => (Src::User, &t.schema.users, t.users, "users"),
        Scope::Session => {
            let vector = t.schema.retrieval.item_vector.as_deref();
            return match (vector, t.schema.items.field(name)) {
                (Some(v), Some((_, f))) if v == name => match f.ty {
                    FieldType::Vector { dim, .. } => Ok(Typed::Vector(Vector::Session(dim), None)),
                    _ => err(pos, format!("items.{name} is not a vector")),
                },
                _ => err(
                    pos,
                    format!(
                        "a session holds the mean of its items' retrieval vector only: \
                         session.{}",
                        vector.unwrap_or("<[retrieval] item_vector, not declared>")
                    ),
                ),
            };
        }
        Scope::Ctx => {
            let Some((i, f)) = t.schema.context_field(name) else {
                return err(pos, format!("the context has no field \"{name}\""));
            };
            return Ok(match &f.ty {
                FieldType::Category(v) => Typed::Cat(Num::Ctx(i), v.clone()),
                _ => Typed::Num(Num::Ctx(i)),
            });
        }
    };
    let Some((i, f)) = entity.field(name) else {
        return err(pos, format!("{what} have no field \"{name}\""));
    };
    Ok(match (table.slot(i), &f.ty) {
        (Slot::Row { at, .. }, FieldType::Number | FieldType::Integer) => {
            Typed::Num(Num::Read(src, at))
        }
        (Slot::Row { at, .. }, FieldType::Category(v)) => Typed::Cat(Num::Read(src, at), v.clone()),
        (Slot::Row { at, len }, FieldType::Vector { by, .. }) => {
            Typed::Vector(Vector::Row(src, at, len), by.clone())
        }
        (Slot::Vector, FieldType::Vector { dim, .. }) => {
            Typed::Vector(Vector::Retrieval(src, *dim), None)
        }
        (Slot::List(index), FieldType::Categories(v)) => {
            Typed::Cats(List { src, index }, v.clone())
        }
        (Slot::List(index), FieldType::Items) => Typed::Items(List { src, index }),
        (Slot::Time(index), FieldType::Timestamp) => Typed::Time(src, index),
        _ => return err(pos, format!("{what}.{name} cannot be read here")),
    })
}

fn code_of(v: &Vocabulary, s: &str, pos: usize) -> Result<Num, Error> {
    match v.code(s) {
        Some(c) => Ok(Num::Const(c as f32)),
        None => err(pos, format!("'{s}' is not in vocabulary \"{}\"", v.name)),
    }
}

const FUNCTIONS: &str = "log1p, ln, exp, sqrt, abs, min, max, clip, if, is_missing, coalesce, \
    dot, cosine, sum, multihot, has, len, code, days_since, count, recency";

/// `count(item|user, kind = '…', min_value = …, last = '…')` and
/// `recency(item|user, kind = '…')`: live state, from events.
fn live(
    name: &str,
    args: &[Expr],
    named: &[(String, Expr)],
    pos: usize,
    t: &Tables<'_>,
) -> Result<Typed, Error> {
    let src = match args {
        [Expr {
            ast: Ast::Entity(Scope::Item),
            ..
        }] => Src::Item,
        [Expr {
            ast: Ast::Entity(Scope::User),
            ..
        }] => Src::User,
        _ => {
            return err(
                pos,
                format!(
                "{name}() takes item or user, then named arguments: {name}(item, kind = 'click'{})",
                if name == "count" { ", last = '7d'" } else { "" }
            ),
            )
        }
    };
    let allowed: &[&str] = if name == "count" {
        &["kind", "min_value", "last"]
    } else {
        &["kind"]
    };
    let (mut kind, mut min_value, mut last) = (None, None, None);
    for (key, value) in named {
        let text = match &value.ast {
            Ast::Str(s) => Some(s.clone()),
            _ => None,
        };
        let number = match &value.ast {
            Ast::Num(x) => Some(*x),
            Ast::Neg(inner) => match inner.ast {
                Ast::Num(x) => Some(-x),
                _ => None,
            },
            _ => None,
        };
        match key.as_str() {
            k if !allowed.contains(&k) => {
                return err(
                    value.pos,
                    format!(
                        "{name}() takes no named argument \"{key}\" (it takes {})",
                        allowed.join(", ")
                    ),
                )
            }
            "kind" | "last" => {
                let Some(text) = text else {
                    let example = if key == "kind" { "'click'" } else { "'7d'" };
                    return err(value.pos, format!("{key} is a text, e.g. {example}"));
                };
                if key == "kind" {
                    kind = Some(text);
                } else {
                    last = Some(text);
                }
            }
            _ => match number {
                Some(x) => min_value = Some(x),
                None => return err(value.pos, "min_value is a constant number"),
            },
        }
    }
    if let Some(k) = &kind {
        if !t.schema.event_kinds.contains(k) {
            return err(
                pos,
                format!(
                    "kind '{k}' is not one of the schema's events.kinds {:?}",
                    t.schema.event_kinds
                ),
            );
        }
    }
    if name == "recency" {
        let kind = kind.map(|k| {
            t.schema
                .event_kinds
                .iter()
                .position(|e| *e == k)
                .expect("checked")
        });
        return Ok(Typed::Num(Num::Recency(src, kind)));
    }
    let Some(kind) = kind else {
        return err(pos, "count() needs kind = '…'");
    };
    let window = t
        .schema
        .window(&kind, min_value, last.as_deref())
        .or_else(|e| err(pos, e))?;
    Ok(Typed::Num(Num::Count(src, window)))
}

fn typed(e: &Expr, t: &Tables<'_>) -> Result<Typed, Error> {
    let pos = e.pos;
    Ok(match &e.ast {
        Ast::Num(x) => {
            if !x.is_finite() || x.abs() > f32::MAX as f64 {
                return err(pos, "the number is beyond the f32 range");
            }
            Typed::Num(Num::Const(*x as f32))
        }
        Ast::Str(s) => Typed::Str(s.clone()),
        Ast::Field(scope, name) => field(*scope, name, pos, t)?,
        Ast::Neg(a) => Typed::Num(Num::Unary(Un::Neg, Box::new(number(a, t)?))),
        Ast::Not(a) => Typed::Num(Num::Unary(Un::Not, Box::new(number(a, t)?))),
        Ast::Binary(op, a, b) => binary(*op, a, b, pos, t)?,
        Ast::Index(target, index) => {
            let (v, by) = vector(target, t)?;
            let i = match (typed(index, t)?, &by) {
                (Typed::Cat(n, iv), Some(by)) if Arc::ptr_eq(&iv, by) => n,
                (Typed::Cat(_, iv), Some(by)) => {
                    return err(
                        index.pos,
                        format!(
                            "the vector is indexed by \"{}\" categories, this is one of \"{}\"",
                            by.name, iv.name
                        ),
                    )
                }
                (Typed::Str(s), Some(by)) => code_of(by, &s, index.pos)?,
                (Typed::Num(Num::Const(c)), _) if c >= 0.0 && c.fract() == 0.0 => {
                    if c as usize >= v.dim() {
                        return err(
                            index.pos,
                            format!("index {c} is past the vector's {} values", v.dim()),
                        );
                    }
                    Num::Const(c)
                }
                (other, _) => {
                    return err(
                        index.pos,
                        format!(
                            "a vector is indexed by a constant position{}, this is {}",
                            by.as_ref()
                                .map(|b| format!(" or a category of \"{}\"", b.name))
                                .unwrap_or_default(),
                            other.describe()
                        ),
                    )
                }
            };
            // A constant position in a row-table vector is a plain read.
            match (&v, &i) {
                (Vector::Row(src, at, _), Num::Const(c)) => Typed::Num(Num::Read(*src, at + *c as usize)),
                _ => Typed::Num(Num::Index(v, Box::new(i))),
            }
        }
        Ast::Entity(_) => {
            return err(
                pos,
                "item, user or ctx alone is an argument of an online-state function; a field is item.<name>",
            )
        }
        Ast::Call(name, args, named) => {
            if name == "count" || name == "recency" {
                return live(name, args, named, pos, t);
            }
            if let Some((key, value)) = named.first() {
                return err(value.pos, format!("{name}() takes no named argument \"{key}\""));
            }
            call(name, args, pos, t)?
        }
    })
}

fn binary(op: BinOp, a: &Expr, b: &Expr, pos: usize, t: &Tables<'_>) -> Result<Typed, Error> {
    let bin = |o: Bin, x: Num, y: Num| Typed::Num(Num::Binary(o, Box::new(x), Box::new(y)));
    if matches!(op, BinOp::Eq | BinOp::Ne) {
        let o = if op == BinOp::Eq { Bin::Eq } else { Bin::Ne };
        return Ok(match (typed(a, t)?, typed(b, t)?) {
            (Typed::Cat(x, v), Typed::Str(s)) => bin(o, x, code_of(&v, &s, b.pos)?),
            (Typed::Str(s), Typed::Cat(y, v)) => bin(o, code_of(&v, &s, a.pos)?, y),
            (Typed::Cat(x, v), Typed::Cat(y, w)) if Arc::ptr_eq(&v, &w) => bin(o, x, y),
            (Typed::Cat(_, v), Typed::Cat(_, w)) => {
                return err(
                    pos,
                    format!(
                        "categories of \"{}\" and \"{}\" cannot be compared",
                        v.name, w.name
                    ),
                )
            }
            (Typed::Num(x), Typed::Num(y)) => bin(o, x, y),
            (x, y) => {
                return err(
                    pos,
                    format!("{} and {} cannot be compared", x.describe(), y.describe()),
                )
            }
        });
    }
    let (x, y) = (number(a, t)?, number(b, t)?);
    if op == BinOp::Div && y == Num::Const(0.0) {
        return err(b.pos, "division by zero");
    }
    let o = match op {
        BinOp::Add => Bin::Add,
        BinOp::Sub => Bin::Sub,
        BinOp::Mul => Bin::Mul,
        BinOp::Div => Bin::Div,
        BinOp::Lt => Bin::Lt,
        BinOp::Le => Bin::Le,
        BinOp::Gt => Bin::Gt,
        BinOp::Ge => Bin::Ge,
        BinOp::And => Bin::And,
        BinOp::Or => Bin::Or,
        BinOp::Eq | BinOp::Ne => unreachable!("handled above"),
    };
    Ok(bin(o, x, y))
}

fn call(name: &str, args: &[Expr], pos: usize, t: &Tables<'_>) -> Result<Typed, Error> {
    let arity = |n: usize| -> Result<(), Error> {
        if args.len() == n {
            Ok(())
        } else {
            err(
                pos,
                format!(
                    "{name}() takes {n} argument{}, got {}",
                    if n == 1 { "" } else { "s" },
                    args.len()
                ),
            )
        }
    };
    let num = |i: usize| number(&args[i], t).map(Box::new);
    let un = |u: Un| -> Result<Typed, Error> {
        arity(1)?;
        Ok(Typed::Num(Num::Unary(u, num(0)?)))
    };
    let bin = |b: Bin| -> Result<Typed, Error> {
        arity(2)?;
        Ok(Typed::Num(Num::Binary(b, num(0)?, num(1)?)))
    };
    let list = |i: usize| -> Result<(List, Option<Arc<Vocabulary>>), Error> {
        match typed(&args[i], t)? {
            Typed::Cats(l, v) => Ok((l, Some(v))),
            Typed::Items(l) => Ok((l, None)),
            other => err(
                args[i].pos,
                format!("expected a list, this is {}", other.describe()),
            ),
        }
    };
    match name {
        "log1p" => un(Un::Log1p),
        "ln" => un(Un::Ln),
        "exp" => un(Un::Exp),
        "sqrt" => un(Un::Sqrt),
        "abs" => un(Un::Abs),
        "min" => bin(Bin::Min),
        "max" => bin(Bin::Max),
        "coalesce" => {
            arity(2)?;
            // Two categories of one vocabulary give a category.
            match (typed(&args[0], t)?, typed(&args[1], t)?) {
                (Typed::Cat(a, v), Typed::Cat(b, w)) if Arc::ptr_eq(&v, &w) => Ok(Typed::Cat(
                    Num::Binary(Bin::Coalesce, Box::new(a), Box::new(b)),
                    v,
                )),
                _ => bin(Bin::Coalesce),
            }
        }
        "clip" => {
            arity(3)?;
            let inner = Num::Binary(Bin::Min, num(0)?, num(2)?);
            Ok(Typed::Num(Num::Binary(Bin::Max, Box::new(inner), num(1)?)))
        }
        "if" => {
            arity(3)?;
            Ok(Typed::Num(Num::If(num(0)?, num(1)?, num(2)?)))
        }
        "is_missing" => {
            arity(1)?;
            let x = match typed(&args[0], t)? {
                Typed::Num(n) | Typed::Cat(n, _) => n,
                Typed::Time(s, i) => Num::DaysSince(s, i),
                other => {
                    return err(
                        args[0].pos,
                        format!("a scalar field may be missing, {} cannot", other.describe()),
                    )
                }
            };
            Ok(Typed::Num(Num::Unary(Un::IsMissing, Box::new(x))))
        }
        "code" => {
            arity(1)?;
            match typed(&args[0], t)? {
                Typed::Cat(n, _) => Ok(Typed::Num(n)),
                other => err(
                    args[0].pos,
                    format!("code() takes a category, this is {}", other.describe()),
                ),
            }
        }
        "dot" | "cosine" => {
            arity(2)?;
            let ((a, av), (b, bv)) = (vector(&args[0], t)?, vector(&args[1], t)?);
            if a.dim() != b.dim() {
                return err(
                    pos,
                    format!("{name}() of vectors of {} and {} values", a.dim(), b.dim()),
                );
            }
            if let (Some(x), Some(y)) = (&av, &bv) {
                if !Arc::ptr_eq(x, y) {
                    return err(
                        pos,
                        format!(
                            "{name}() of vectors by \"{}\" and by \"{}\"",
                            x.name, y.name
                        ),
                    );
                }
            }
            Ok(Typed::Num(if name == "dot" {
                Num::Dot(a, b)
            } else {
                Num::Cosine(a, b)
            }))
        }
        "sum" => {
            arity(1)?;
            Ok(Typed::Num(Num::Sum(vector(&args[0], t)?.0)))
        }
        "multihot" => {
            arity(1)?;
            match list(0)? {
                (l, Some(v)) => Ok(Typed::Vector(Vector::MultiHot(l, v.len()), Some(v))),
                (_, None) => err(args[0].pos, "multihot() takes a list of categories"),
            }
        }
        "has" => {
            arity(2)?;
            let (l, v) = list(0)?;
            let Some(v) = v else {
                return err(args[0].pos, "has() takes a list of categories");
            };
            let code = match typed(&args[1], t)? {
                Typed::Str(s) => code_of(&v, &s, args[1].pos)?,
                Typed::Cat(n, w) if Arc::ptr_eq(&v, &w) => n,
                other => {
                    return err(
                        args[1].pos,
                        format!(
                            "has() looks for a category of \"{}\", this is {}",
                            v.name,
                            other.describe()
                        ),
                    )
                }
            };
            Ok(Typed::Num(Num::Has(l, Box::new(code))))
        }
        "len" => {
            arity(1)?;
            Ok(Typed::Num(Num::Len(list(0)?.0)))
        }
        "days_since" => {
            arity(1)?;
            match typed(&args[0], t)? {
                Typed::Time(s, i) => Ok(Typed::Num(Num::DaysSince(s, i))),
                other => err(
                    args[0].pos,
                    format!(
                        "days_since() takes a timestamp, this is {}",
                        other.describe()
                    ),
                ),
            }
        }
        other => err(
            pos,
            format!("no function \"{other}\" (functions: {FUNCTIONS})"),
        ),
    }
}
