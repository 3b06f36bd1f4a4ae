//! Feature expressions, text to syntax tree. Every node keeps the byte
//! position where it starts, so errors can point into the expression.
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := cmp ("&&" cmp)*
//! cmp     := sum (("==" | "!=" | "<" | "<=" | ">" | ">=") sum)?
//! sum     := product (("+" | "-") product)*
//! product := unary (("*" | "/") unary)*
//! unary   := ("-" | "!") unary | postfix
//! postfix := primary ("[" expr "]")*
//! primary := number | 'string' | "string" | name "(" args ")"
//!          | ("item" | "user" | "ctx" | "session") "." name | "(" expr ")"
//! ```

/// Where a field reference points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Item,
    User,
    Ctx,
    /// The request's session: its recent items.
    Session,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    Num(f64),
    Str(String),
    Field(Scope, String),
    /// `item`, `user` or `ctx` alone: an argument of an online-state
    /// function (`count(item, kind = "click", last = "7d")`).
    Entity(Scope),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// Positional, then named (`name = value`) arguments.
    Call(String, Vec<Expr>, Vec<(String, Expr)>),
    Index(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }
}

/// A node and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub ast: Ast,
    pub pos: usize,
}

/// A parse or type error at a byte offset of the expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub pos: usize,
    pub message: String,
}

pub fn err<T>(pos: usize, message: impl Into<String>) -> Result<T, Error> {
    Err(Error {
        pos,
        message: message.into(),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Name(String),
    Sym(&'static str),
    End,
}

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, Error> {
    const SYMBOLS: [&str; 18] = [
        "==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", "/", "!", "(", ")", "[", "]",
        "=",
    ];
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < bytes.len()
                && (bytes[i].is_ascii_digit()
                    || bytes[i] == b'.'
                    || ((bytes[i] == b'e' || bytes[i] == b'E')
                        && bytes
                            .get(i + 1)
                            .is_some_and(|b| b.is_ascii_digit() || *b == b'-' || *b == b'+'))
                    || ((bytes[i] == b'-' || bytes[i] == b'+')
                        && matches!(bytes[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            let s = &text[start..i];
            let x: f64 = s.parse().map_err(|_| Error {
                pos: start,
                message: format!("\"{s}\" is not a number"),
            })?;
            out.push((Tok::Num(x), start));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((Tok::Name(text[start..i].to_string()), start));
        } else if c == b'\'' || c == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += 1;
            }
            if i == bytes.len() {
                return err(start, "a string is not closed");
            }
            out.push((Tok::Str(text[start + 1..i].to_string()), start));
            i += 1;
        } else if c == b',' {
            out.push((Tok::Sym(","), start));
            i += 1;
        } else if c == b'.' {
            out.push((Tok::Sym("."), start));
            i += 1;
        } else if let Some(sym) = SYMBOLS.iter().find(|s| text[i..].starts_with(**s)) {
            out.push((Tok::Sym(sym), start));
            i += sym.len();
        } else {
            let ch = text[i..].chars().next().unwrap_or('?');
            return err(start, format!("unexpected \"{ch}\""));
        }
    }
    out.push((Tok::End, text.len()));
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn pos(&self) -> usize {
        self.toks[self.at].1
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.at].clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn eat(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Tok::Sym(s) if *s == sym) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, sym: &str) -> Result<(), Error> {
        if self.eat(sym) {
            Ok(())
        } else {
            err(self.pos(), format!("expected \"{sym}\" here"))
        }
    }

    fn binary(
        &mut self,
        ops: &[(&'static str, BinOp)],
        next: fn(&mut Parser) -> Result<Expr, Error>,
        chain: bool,
    ) -> Result<Expr, Error> {
        let mut left = next(self)?;
        loop {
            let Some(&(_, op)) = ops.iter().find(|(s, _)| *self.peek() == Tok::Sym(s)) else {
                return Ok(left);
            };
            self.next();
            let right = next(self)?;
            let pos = left.pos;
            left = Expr {
                ast: Ast::Binary(op, Box::new(left), Box::new(right)),
                pos,
            };
            if !chain {
                if ops.iter().any(|(s, _)| *self.peek() == Tok::Sym(s)) {
                    return err(self.pos(), "comparisons do not chain; use && between them");
                }
                return Ok(left);
            }
        }
    }

    fn or(&mut self) -> Result<Expr, Error> {
        self.binary(&[("||", BinOp::Or)], Parser::and, true)
    }

    fn and(&mut self) -> Result<Expr, Error> {
        self.binary(&[("&&", BinOp::And)], Parser::cmp, true)
    }

    fn cmp(&mut self) -> Result<Expr, Error> {
        self.binary(
            &[
                ("==", BinOp::Eq),
                ("!=", BinOp::Ne),
                ("<=", BinOp::Le),
                (">=", BinOp::Ge),
                ("<", BinOp::Lt),
                (">", BinOp::Gt),
            ],
            Parser::sum,
            false,
        )
    }

    fn sum(&mut self) -> Result<Expr, Error> {
        self.binary(
            &[("+", BinOp::Add), ("-", BinOp::Sub)],
            Parser::product,
            true,
        )
    }

    fn product(&mut self) -> Result<Expr, Error> {
        self.binary(&[("*", BinOp::Mul), ("/", BinOp::Div)], Parser::unary, true)
    }

    fn unary(&mut self) -> Result<Expr, Error> {
        let pos = self.pos();
        if self.eat("-") {
            let e = self.unary()?;
            return Ok(Expr {
                ast: Ast::Neg(Box::new(e)),
                pos,
            });
        }
        if self.eat("!") {
            let e = self.unary()?;
            return Ok(Expr {
                ast: Ast::Not(Box::new(e)),
                pos,
            });
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, Error> {
        let mut e = self.primary()?;
        while self.eat("[") {
            let index = self.or()?;
            self.expect("]")?;
            let pos = e.pos;
            e = Expr {
                ast: Ast::Index(Box::new(e), Box::new(index)),
                pos,
            };
        }
        Ok(e)
    }

    fn primary(&mut self) -> Result<Expr, Error> {
        let (tok, pos) = self.next();
        let ast = match tok {
            Tok::Num(x) => Ast::Num(x),
            Tok::Str(s) => Ast::Str(s),
            Tok::Sym("(") => {
                let e = self.or()?;
                self.expect(")")?;
                return Ok(e);
            }
            Tok::Name(name) if matches!(name.as_str(), "item" | "user" | "ctx" | "session") => {
                let scope = match name.as_str() {
                    "item" => Scope::Item,
                    "user" => Scope::User,
                    "session" => Scope::Session,
                    _ => Scope::Ctx,
                };
                if !self.eat(".") {
                    return Ok(Expr {
                        ast: Ast::Entity(scope),
                        pos,
                    });
                }
                match self.next() {
                    (Tok::Name(field), _) => Ast::Field(scope, field),
                    (_, p) => return err(p, format!("a field name after \"{name}.\"")),
                }
            }
            Tok::Name(name) => {
                if !self.eat("(") {
                    return err(
                        pos,
                        format!("\"{name}\" is neither a function call nor item./user./ctx. field"),
                    );
                }
                let (mut args, mut named) = (Vec::new(), Vec::new());
                if !self.eat(")") {
                    loop {
                        let named_arg = matches!(self.peek(), Tok::Name(_))
                            && matches!(self.toks.get(self.at + 1), Some((Tok::Sym("="), _)));
                        if named_arg {
                            let (Tok::Name(key), _) = self.next() else {
                                unreachable!("peeked a name")
                            };
                            self.next();
                            named.push((key, self.or()?));
                        } else if !named.is_empty() {
                            return err(self.pos(), "positional arguments come before named ones");
                        } else {
                            args.push(self.or()?);
                        }
                        if self.eat(")") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ast::Call(name, args, named)
            }
            Tok::End => return err(pos, "the expression ends too early"),
            Tok::Sym(s) => return err(pos, format!("unexpected \"{s}\"")),
        };
        Ok(Expr { ast, pos })
    }
}

/// Parses one expression.
pub fn parse(text: &str) -> Result<Expr, Error> {
    let mut p = Parser {
        toks: lex(text)?,
        at: 0,
    };
    let e = p.or()?;
    if *p.peek() != Tok::End {
        return err(p.pos(), "unexpected text after the expression");
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(e: &Expr) -> String {
        match &e.ast {
            Ast::Num(x) => format!("{x}"),
            Ast::Str(s) => format!("'{s}'"),
            Ast::Field(scope, f) => format!("{scope:?}.{f}").to_lowercase(),
            Ast::Neg(x) => format!("(-{})", show(x)),
            Ast::Not(x) => format!("(!{})", show(x)),
            Ast::Binary(op, a, b) => format!("({} {} {})", show(a), op.symbol(), show(b)),
            Ast::Entity(scope) => format!("{scope:?}").to_lowercase(),
            Ast::Call(f, args, named) => format!(
                "{f}({})",
                args.iter()
                    .map(show)
                    .chain(named.iter().map(|(k, v)| format!("{k}={}", show(v))))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ast::Index(a, b) => format!("{}[{}]", show(a), show(b)),
        }
    }

    #[test]
    fn precedence_and_shapes() {
        for (text, want) in [
            ("1 + 2 * 3", "(1 + (2 * 3))"),
            ("(1 + 2) * 3", "((1 + 2) * 3)"),
            ("a(1, 2) - -x(3)", "(a(1, 2) - (-x(3)))"),
            ("item.lift[user.job] * 2", "(item.lift[user.job] * 2)"),
            (
                "ctx.a == 'M' && !(ctx.b < 1.5e2) || 0",
                "(((ctx.a == 'M') && (!(ctx.b < 150))) || 0)",
            ),
            ("log1p(item.n) / 2 - 1", "((log1p(item.n) / 2) - 1)"),
            ("f()", "f()"),
            (
                "count(item, kind = 'rating', min_value = 4, last = '30d')",
                "count(item, kind='rating', min_value=4, last='30d')",
            ),
        ] {
            assert_eq!(show(&parse(text).unwrap()), want, "{text}");
        }
    }

    #[test]
    fn errors_point_at_the_place() {
        for (text, pos, msg) in [
            ("1 +", 3, "ends too early"),
            ("abs(1", 5, "expected \",\""),
            ("item.", 5, "a field name"),
            ("1 < 2 < 3", 6, "do not chain"),
            ("foo + 1", 0, "neither a function"),
            ("1 $ 2", 2, "unexpected \"$\""),
            ("'open", 0, "not closed"),
            ("1 2", 2, "unexpected text"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.pos, pos, "{text}: {}", e.message);
            assert!(e.message.contains(msg), "{text}: {}", e.message);
        }
    }
}
