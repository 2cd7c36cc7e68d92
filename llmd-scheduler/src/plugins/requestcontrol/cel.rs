//! A subset of CEL (the Common Expression Language, as cel-go evaluates it), enough
//! for `request-attribute-reporter`'s expressions over a response's usage:
//! literals (int, `u`-suffixed uint, double, string, bool, `null`), declared variables,
//! field selection and `m["key"]` on maps, the `has(m.f)` macro, `int()`, `uint()`,
//! `double()` and `string()`, unary `-` and `!`, `* / %`, `+ -`, `< <= > >= == !=`,
//! `&&` and `||` (commutative, absorbing errors as CEL does), and `c ? a : b`.
//!
//! As in CEL, arithmetic does not mix numeric types (`1.0 + 1` has no overload: a
//! usage field, a double, adds to `1.0`), integer overflow and division by zero are
//! errors, ordering compares across numeric types, and equality across numeric types
//! compares values. Compilation checks declarations and the operand types it can know
//! (variables of map type have fields of unknown type). Anything else — lists, maps
//! and messages as literals, `in`, methods, macros other than `has`, other functions —
//! fails to compile, naming what is not supported.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// A CEL value.
#[derive(Debug, Clone, PartialEq)]
pub enum CelValue {
    /// `null`.
    Null,
    /// A bool.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A double.
    Double(f64),
    /// A string.
    String(String),
    /// A map with string keys (a `google.protobuf.Struct`).
    Map(BTreeMap<String, CelValue>),
}

impl CelValue {
    fn ty(&self) -> Ty {
        match self {
            CelValue::Null => Ty::Null,
            CelValue::Bool(_) => Ty::Bool,
            CelValue::Int(_) => Ty::Int,
            CelValue::Uint(_) => Ty::Uint,
            CelValue::Double(_) => Ty::Double,
            CelValue::String(_) => Ty::String,
            CelValue::Map(_) => Ty::Map,
        }
    }
}

/// A type known at compile time (`Dyn`: known only when evaluated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// Any type.
    Dyn,
    /// `null_type`.
    Null,
    /// `bool`.
    Bool,
    /// `int`.
    Int,
    /// `uint`.
    Uint,
    /// `double`.
    Double,
    /// `string`.
    String,
    /// `map(string, dyn)`.
    Map,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Dyn => "dyn",
            Ty::Null => "null_type",
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::Uint => "uint",
            Ty::Double => "double",
            Ty::String => "string",
            Ty::Map => "map",
        }
    }

    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conv {
    Int,
    Uint,
    Double,
    String,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Lit(CelValue),
    Var(String),
    Select(Box<Expr>, String),
    Has(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Arith(Arith, Box<Expr>, Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    Convert(Conv, Box<Expr>),
}

fn op_name(a: Arith) -> &'static str {
    match a {
        Arith::Add => "_+_",
        Arith::Sub => "_-_",
        Arith::Mul => "_*_",
        Arith::Div => "_/_",
        Arith::Rem => "_%_",
    }
}

fn cmp_name(c: Cmp) -> &'static str {
    match c {
        Cmp::Lt => "_<_",
        Cmp::Le => "_<=_",
        Cmp::Gt => "_>_",
        Cmp::Ge => "_>=_",
        Cmp::Eq => "_==_",
        Cmp::Ne => "_!=_",
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(CelValue),
    Ident(String),
    Punct(&'static str),
}

const PUNCTS: [&str; 24] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "+", "-", "*", "/", "%", "?", ":", ".", ",", "(", ")", "[", "]",
    "{", "}",
];

const RESERVED: [&str; 17] = [
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let starts_number = c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        if starts_number {
            let (tok, next) = lex_number(&chars, i)?;
            out.push(tok);
            i = next;
            continue;
        }
        let raw = matches!(c, 'r' | 'R') && matches!(chars.get(i + 1), Some('\'' | '"'));
        if c == '\'' || c == '"' || raw {
            let (s, next) = lex_string(&chars, if raw { i + 1 } else { i }, raw)?;
            out.push(Tok::Lit(CelValue::String(s)));
            i = next;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if matches!(word.as_str(), "b" | "B") && matches!(chars.get(i), Some('\'' | '"')) {
                return Err("bytes literals are not supported".into());
            }
            out.push(match word.as_str() {
                "true" => Tok::Lit(CelValue::Bool(true)),
                "false" => Tok::Lit(CelValue::Bool(false)),
                "null" => Tok::Lit(CelValue::Null),
                "in" => return Err("the 'in' operator is not supported".into()),
                w if RESERVED.contains(&w) => return Err(format!("reserved identifier: {w}")),
                _ => Tok::Ident(word),
            });
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let Some(p) = PUNCTS.iter().find(|p| rest.starts_with(**p)) else {
            return Err(format!("Syntax error: token recognition error at: '{c}'"));
        };
        out.push(Tok::Punct(p));
        i += p.len();
    }
    Ok(out)
}

fn lex_number(chars: &[char], start: usize) -> Result<(Tok, usize), String> {
    let mut i = start;
    let text = |a: usize, b: usize| chars[a..b].iter().collect::<String>();
    if chars[i] == '0' && matches!(chars.get(i + 1), Some('x' | 'X')) {
        i += 2;
        let from = i;
        while i < chars.len() && chars[i].is_ascii_hexdigit() {
            i += 1;
        }
        let digits = text(from, i);
        if matches!(chars.get(i), Some('u' | 'U')) {
            let v = u64::from_str_radix(&digits, 16).map_err(|e| format!("invalid uint literal: {e}"))?;
            return Ok((Tok::Lit(CelValue::Uint(v)), i + 1));
        }
        let v = i64::from_str_radix(&digits, 16).map_err(|e| format!("invalid int literal: {e}"))?;
        return Ok((Tok::Lit(CelValue::Int(v)), i));
    }
    while i < chars.len() && chars[i].is_ascii_digit() {
        i += 1;
    }
    let mut float = false;
    if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
        float = true;
        i += 1;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let mut j = i + 1;
        if matches!(chars.get(j), Some('+' | '-')) {
            j += 1;
        }
        if chars.get(j).is_some_and(char::is_ascii_digit) {
            float = true;
            i = j;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    let t = text(start, i);
    if float {
        let v: f64 = t.parse().map_err(|e| format!("invalid double literal {t}: {e}"))?;
        return Ok((Tok::Lit(CelValue::Double(v)), i));
    }
    if matches!(chars.get(i), Some('u' | 'U')) {
        let v: u64 = t.parse().map_err(|e| format!("invalid uint literal {t}: {e}"))?;
        return Ok((Tok::Lit(CelValue::Uint(v)), i + 1));
    }
    let v: i64 = t.parse().map_err(|e| format!("invalid int literal {t}: {e}"))?;
    Ok((Tok::Lit(CelValue::Int(v)), i))
}

fn lex_string(chars: &[char], start: usize, raw: bool) -> Result<(String, usize), String> {
    let quote = chars[start];
    if chars.get(start + 1) == Some(&quote) && chars.get(start + 2) == Some(&quote) {
        return Err("triple-quoted strings are not supported".into());
    }
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = chars.get(i) else { return Err("Syntax error: unterminated string".into()) };
        i += 1;
        if c == quote {
            return Ok((out, i));
        }
        if c == '\n' {
            return Err("Syntax error: newline in string".into());
        }
        if c != '\\' || raw {
            out.push(c);
            continue;
        }
        let Some(&e) = chars.get(i) else { return Err("Syntax error: unterminated string".into()) };
        i += 1;
        let hex = |n: usize, i: &mut usize| -> Result<char, String> {
            let s: String = chars.get(*i..*i + n).ok_or("Syntax error: short escape")?.iter().collect();
            *i += n;
            u32::from_str_radix(&s, 16).ok().and_then(char::from_u32).ok_or_else(|| format!("invalid escape \\{s}"))
        };
        out.push(match e {
            '\\' => '\\',
            '\'' => '\'',
            '"' => '"',
            '`' => '`',
            '?' => '?',
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\x0b',
            'x' | 'X' => hex(2, &mut i)?,
            'u' => hex(4, &mut i)?,
            'U' => hex(8, &mut i)?,
            other => return Err(format!("Syntax error: invalid escape sequence \\{other}")),
        });
    }
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, p: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Punct(q)) if *q == p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> Result<(), String> {
        if self.eat(p) { Ok(()) } else { Err(format!("Syntax error: expected '{p}', found {}", self.describe())) }
    }

    fn describe(&self) -> String {
        match self.peek() {
            None => "<EOF>".into(),
            Some(Tok::Punct(p)) => format!("'{p}'"),
            Some(Tok::Ident(s)) => format!("'{s}'"),
            Some(Tok::Lit(v)) => format!("{v:?}"),
        }
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let c = self.or()?;
        if self.eat("?") {
            let a = self.or()?;
            self.expect(":")?;
            let b = self.expr()?;
            return Ok(Expr::Cond(Box::new(c), Box::new(a), Box::new(b)));
        }
        Ok(c)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut l = self.and()?;
        while self.eat("||") {
            l = Expr::Or(Box::new(l), Box::new(self.and()?));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut l = self.rel()?;
        while self.eat("&&") {
            l = Expr::And(Box::new(l), Box::new(self.rel()?));
        }
        Ok(l)
    }

    fn rel(&mut self) -> Result<Expr, String> {
        let mut l = self.add()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Punct("<")) => Cmp::Lt,
                Some(Tok::Punct("<=")) => Cmp::Le,
                Some(Tok::Punct(">")) => Cmp::Gt,
                Some(Tok::Punct(">=")) => Cmp::Ge,
                Some(Tok::Punct("==")) => Cmp::Eq,
                Some(Tok::Punct("!=")) => Cmp::Ne,
                _ => return Ok(l),
            };
            self.pos += 1;
            l = Expr::Cmp(op, Box::new(l), Box::new(self.add()?));
        }
    }

    fn add(&mut self) -> Result<Expr, String> {
        let mut l = self.mul()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Punct("+")) => Arith::Add,
                Some(Tok::Punct("-")) => Arith::Sub,
                _ => return Ok(l),
            };
            self.pos += 1;
            l = Expr::Arith(op, Box::new(l), Box::new(self.mul()?));
        }
    }

    fn mul(&mut self) -> Result<Expr, String> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Punct("*")) => Arith::Mul,
                Some(Tok::Punct("/")) => Arith::Div,
                Some(Tok::Punct("%")) => Arith::Rem,
                _ => return Ok(l),
            };
            self.pos += 1;
            l = Expr::Arith(op, Box::new(l), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("-") {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        self.member()
    }

    fn member(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let Some(Tok::Ident(f)) = self.peek().cloned() else {
                    return Err(format!("Syntax error: expected a field name, found {}", self.describe()));
                };
                self.pos += 1;
                if matches!(self.peek(), Some(Tok::Punct("("))) {
                    return Err(format!("method calls are not supported: .{f}()"));
                }
                e = Expr::Select(Box::new(e), f);
            } else if self.eat("[") {
                let i = self.expr()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(i));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        // A leading dot names the root scope: `.usage` is `usage`.
        let dotted = self.eat(".");
        match self.peek().cloned() {
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                if !self.eat("(") {
                    return Ok(Expr::Var(name));
                }
                let mut args = Vec::new();
                if !self.eat(")") {
                    loop {
                        args.push(self.expr()?);
                        if self.eat(")") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                let [arg] =
                    <[Expr; 1]>::try_from(args).map_err(|a| format!("{name}() takes one argument, got {}", a.len()))?;
                Ok(match name.as_str() {
                    "has" => match arg {
                        Expr::Select(m, f) => Expr::Has(m, f),
                        _ => return Err("invalid argument to has() macro".into()),
                    },
                    "int" => Expr::Convert(Conv::Int, Box::new(arg)),
                    "uint" => Expr::Convert(Conv::Uint, Box::new(arg)),
                    "double" => Expr::Convert(Conv::Double, Box::new(arg)),
                    "string" => Expr::Convert(Conv::String, Box::new(arg)),
                    other => return Err(format!("function {other}() is not supported")),
                })
            }
            _ if dotted => Err(format!("Syntax error: expected an identifier, found {}", self.describe())),
            Some(Tok::Lit(v)) => {
                self.pos += 1;
                Ok(Expr::Lit(v))
            }
            Some(Tok::Punct("(")) => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Some(Tok::Punct("[" | "{")) => Err("list and map literals are not supported".into()),
            _ => Err(format!("Syntax error: unexpected {}", self.describe())),
        }
    }
}

fn no_overload(op: &str, types: &[Ty]) -> String {
    let names: Vec<&str> = types.iter().map(|t| t.name()).collect();
    format!("found no matching overload for '{op}' applied to '({})'", names.join(", "))
}

fn check(e: &Expr, vars: &BTreeMap<String, Ty>) -> Result<Ty, String> {
    use Ty::*;
    Ok(match e {
        Expr::Lit(v) => v.ty(),
        Expr::Var(n) => *vars.get(n).ok_or_else(|| format!("undeclared reference to '{n}'"))?,
        Expr::Select(m, _) | Expr::Has(m, _) => match check(m, vars)? {
            Map | Dyn if matches!(e, Expr::Has(..)) => Bool,
            Map | Dyn => Dyn,
            t => return Err(format!("type '{}' does not support field selection", t.name())),
        },
        Expr::Index(m, i) => match (check(m, vars)?, check(i, vars)?) {
            (Map | Dyn, String | Dyn) => Dyn,
            (a, b) => return Err(no_overload("_[_]", &[a, b])),
        },
        Expr::Neg(x) => match check(x, vars)? {
            t @ (Int | Double | Dyn) => t,
            t => return Err(no_overload("-_", &[t])),
        },
        Expr::Not(x) => match check(x, vars)? {
            Bool | Dyn => Bool,
            t => return Err(no_overload("!_", &[t])),
        },
        Expr::Arith(op, a, b) => {
            let (x, y) = (check(a, vars)?, check(b, vars)?);
            match (x, y) {
                (Dyn, _) | (_, Dyn) => Dyn,
                (Int, Int) | (Uint, Uint) => x,
                (Double, Double) if *op != Arith::Rem => Double,
                (String, String) if *op == Arith::Add => String,
                _ => return Err(no_overload(op_name(*op), &[x, y])),
            }
        }
        Expr::Cmp(op, a, b) => {
            let (x, y) = (check(a, vars)?, check(b, vars)?);
            let eq = matches!(op, Cmp::Eq | Cmp::Ne);
            let ok = x == Dyn
                || y == Dyn
                || x == y && (eq || matches!(x, Bool | Int | Uint | Double | String))
                || x.numeric() && y.numeric()
                || eq && (x == Null || y == Null);
            if !ok {
                return Err(no_overload(cmp_name(*op), &[x, y]));
            }
            Bool
        }
        Expr::And(a, b) | Expr::Or(a, b) => {
            let name = if matches!(e, Expr::And(..)) { "_&&_" } else { "_||_" };
            let (x, y) = (check(a, vars)?, check(b, vars)?);
            if !matches!(x, Bool | Dyn) || !matches!(y, Bool | Dyn) {
                return Err(no_overload(name, &[x, y]));
            }
            Bool
        }
        Expr::Cond(c, a, b) => {
            let (t, x, y) = (check(c, vars)?, check(a, vars)?, check(b, vars)?);
            if !matches!(t, Bool | Dyn) {
                return Err(no_overload("_?_:_", &[t, x, y]));
            }
            match (x, y) {
                _ if x == y => x,
                (Dyn, _) | (_, Dyn) => Dyn,
                _ => return Err(no_overload("_?_:_", &[t, x, y])),
            }
        }
        Expr::Convert(to, x) => {
            let t = check(x, vars)?;
            let (name, target, ok) = match to {
                Conv::Int => ("int", Int, matches!(t, Int | Uint | Double | String | Dyn)),
                Conv::Uint => ("uint", Uint, matches!(t, Int | Uint | Double | String | Dyn)),
                Conv::Double => ("double", Double, matches!(t, Int | Uint | Double | String | Dyn)),
                Conv::String => ("string", String, matches!(t, Int | Uint | Double | String | Bool | Dyn)),
            };
            if !ok {
                return Err(no_overload(name, &[t]));
            }
            target
        }
    })
}

/// A compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    expr: Expr,
}

impl Program {
    /// Parses and checks `src` with `vars` declared (name and type).
    pub fn compile(src: &str, vars: &[(&str, Ty)]) -> Result<Self, String> {
        let mut p = Parser { toks: lex(src)?, pos: 0 };
        if p.toks.is_empty() {
            return Err("Syntax error: empty expression".into());
        }
        let expr = p.expr()?;
        if p.pos != p.toks.len() {
            return Err(format!("Syntax error: unexpected {}", p.describe()));
        }
        let declared: BTreeMap<String, Ty> = vars.iter().map(|(n, t)| (n.to_string(), *t)).collect();
        check(&expr, &declared)?;
        Ok(Program { expr })
    }

    /// Evaluates the expression with `vars` bound; errors are CEL's runtime errors.
    pub fn eval(&self, vars: &BTreeMap<String, CelValue>) -> Result<CelValue, String> {
        eval(&self.expr, vars)
    }
}

fn no_such_overload() -> String {
    "no such overload".into()
}

fn eval(e: &Expr, vars: &BTreeMap<String, CelValue>) -> Result<CelValue, String> {
    use CelValue as V;
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Var(n) => vars.get(n).cloned().ok_or_else(|| format!("no such attribute: {n}"))?,
        Expr::Select(m, f) => match eval(m, vars)? {
            V::Map(m) => m.get(f).cloned().ok_or_else(|| format!("no such key: {f}"))?,
            _ => return Err(no_such_overload()),
        },
        Expr::Has(m, f) => match eval(m, vars)? {
            V::Map(m) => V::Bool(m.contains_key(f)),
            _ => return Err(no_such_overload()),
        },
        Expr::Index(m, i) => match (eval(m, vars)?, eval(i, vars)?) {
            (V::Map(m), V::String(k)) => m.get(&k).cloned().ok_or_else(|| format!("no such key: {k}"))?,
            (V::Map(_), k) => return Err(format!("no such key: {k:?}")),
            _ => return Err(no_such_overload()),
        },
        Expr::Neg(x) => match eval(x, vars)? {
            V::Int(i) => V::Int(i.checked_neg().ok_or("integer overflow")?),
            V::Double(d) => V::Double(-d),
            _ => return Err(no_such_overload()),
        },
        Expr::Not(x) => match eval(x, vars)? {
            V::Bool(b) => V::Bool(!b),
            _ => return Err(no_such_overload()),
        },
        Expr::Arith(op, a, b) => arith(*op, eval(a, vars)?, eval(b, vars)?)?,
        Expr::Cmp(op, a, b) => compare(*op, &eval(a, vars)?, &eval(b, vars)?)?,
        Expr::And(a, b) | Expr::Or(a, b) => {
            // CEL's commutative logic: the deciding value wins over an error on either side.
            let decide = matches!(e, Expr::Or(..));
            let l = eval(a, vars);
            if l == Ok(V::Bool(decide)) {
                return Ok(V::Bool(decide));
            }
            let r = eval(b, vars);
            if r == Ok(V::Bool(decide)) {
                return Ok(V::Bool(decide));
            }
            match (l?, r?) {
                (V::Bool(_), V::Bool(_)) => V::Bool(!decide),
                _ => return Err(no_such_overload()),
            }
        }
        Expr::Cond(c, a, b) => match eval(c, vars)? {
            V::Bool(true) => eval(a, vars)?,
            V::Bool(false) => eval(b, vars)?,
            _ => return Err(no_such_overload()),
        },
        Expr::Convert(to, x) => convert(*to, eval(x, vars)?)?,
    })
}

fn arith(op: Arith, a: CelValue, b: CelValue) -> Result<CelValue, String> {
    use CelValue as V;
    let overflow = || "integer overflow".to_string();
    let uoverflow = || "unsigned integer overflow".to_string();
    Ok(match (a, b) {
        (V::Int(x), V::Int(y)) => V::Int(match op {
            Arith::Add => x.checked_add(y).ok_or_else(overflow)?,
            Arith::Sub => x.checked_sub(y).ok_or_else(overflow)?,
            Arith::Mul => x.checked_mul(y).ok_or_else(overflow)?,
            Arith::Div if y == 0 => return Err("divide by zero".into()),
            Arith::Div => x.checked_div(y).ok_or_else(overflow)?,
            Arith::Rem if y == 0 => return Err("modulus by zero".into()),
            Arith::Rem => x.checked_rem(y).ok_or_else(overflow)?,
        }),
        (V::Uint(x), V::Uint(y)) => V::Uint(match op {
            Arith::Add => x.checked_add(y).ok_or_else(uoverflow)?,
            Arith::Sub => x.checked_sub(y).ok_or_else(uoverflow)?,
            Arith::Mul => x.checked_mul(y).ok_or_else(uoverflow)?,
            Arith::Div => x.checked_div(y).ok_or("divide by zero")?,
            Arith::Rem => x.checked_rem(y).ok_or("modulus by zero")?,
        }),
        (V::Double(x), V::Double(y)) => V::Double(match op {
            Arith::Add => x + y,
            Arith::Sub => x - y,
            Arith::Mul => x * y,
            Arith::Div => x / y,
            Arith::Rem => return Err(no_such_overload()),
        }),
        (V::String(x), V::String(y)) if op == Arith::Add => V::String(x + &y),
        _ => return Err(no_such_overload()),
    })
}

// Numeric ordering across int, uint and double, as cel-go compares them.
fn numeric_order(a: &CelValue, b: &CelValue) -> Option<Option<Ordering>> {
    use CelValue as V;
    Some(match (a, b) {
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::Uint(x), V::Uint(y)) => Some(x.cmp(y)),
        (V::Double(x), V::Double(y)) => x.partial_cmp(y),
        (V::Int(x), V::Uint(y)) => Some(if *x < 0 { Ordering::Less } else { (*x as u64).cmp(y) }),
        (V::Uint(_), V::Int(_)) => numeric_order(b, a)?.map(Ordering::reverse),
        (V::Int(x), V::Double(y)) => (*x as f64).partial_cmp(y),
        (V::Double(_), V::Int(_) | V::Uint(_)) => numeric_order(b, a)?.map(Ordering::reverse),
        (V::Uint(x), V::Double(y)) => (*x as f64).partial_cmp(y),
        _ => return None,
    })
}

fn equal(a: &CelValue, b: &CelValue) -> bool {
    use CelValue as V;
    match (a, b) {
        (V::Map(x), V::Map(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w))),
        _ => match numeric_order(a, b) {
            Some(o) => o == Some(Ordering::Equal),
            None => a == b,
        },
    }
}

fn compare(op: Cmp, a: &CelValue, b: &CelValue) -> Result<CelValue, String> {
    use CelValue as V;
    if matches!(op, Cmp::Eq | Cmp::Ne) {
        return Ok(V::Bool(equal(a, b) == (op == Cmp::Eq)));
    }
    let order = match (a, b) {
        (V::String(x), V::String(y)) => Some(x.cmp(y)),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        _ => numeric_order(a, b).ok_or_else(no_such_overload)?,
    };
    // NaN orders with nothing.
    let Some(o) = order else { return Ok(V::Bool(false)) };
    Ok(V::Bool(match op {
        Cmp::Lt => o == Ordering::Less,
        Cmp::Le => o != Ordering::Greater,
        Cmp::Gt => o == Ordering::Greater,
        Cmp::Ge => o != Ordering::Less,
        Cmp::Eq => o == Ordering::Equal,
        Cmp::Ne => o != Ordering::Equal,
    }))
}

fn convert(to: Conv, v: CelValue) -> Result<CelValue, String> {
    use CelValue as V;
    let range = || "range error converting value".to_string();
    Ok(match (to, v) {
        (Conv::Int, V::Int(i)) => V::Int(i),
        (Conv::Int, V::Uint(u)) => V::Int(i64::try_from(u).map_err(|_| range())?),
        (Conv::Int, V::Double(d)) => {
            // i64::MAX as f64 rounds up to 2^63, which is out of range.
            if !(d > -9.223_372_036_854_776e18 && d < 9.223_372_036_854_776e18) {
                return Err(range());
            }
            V::Int(d.trunc() as i64)
        }
        (Conv::Int, V::String(s)) => V::Int(s.parse().map_err(|e| format!("string to int conversion error: {e}"))?),
        (Conv::Uint, V::Int(i)) => V::Uint(u64::try_from(i).map_err(|_| range())?),
        (Conv::Uint, V::Uint(u)) => V::Uint(u),
        (Conv::Uint, V::Double(d)) => {
            if !(0.0..1.844_674_407_370_955_2e19).contains(&d) {
                return Err(range());
            }
            V::Uint(d.trunc() as u64)
        }
        (Conv::Uint, V::String(s)) => V::Uint(s.parse().map_err(|e| format!("string to uint conversion error: {e}"))?),
        (Conv::Double, V::Int(i)) => V::Double(i as f64),
        (Conv::Double, V::Uint(u)) => V::Double(u as f64),
        (Conv::Double, V::Double(d)) => V::Double(d),
        (Conv::Double, V::String(s)) => {
            V::Double(s.parse().map_err(|e| format!("string to double conversion error: {e}"))?)
        }
        (Conv::String, V::Int(i)) => V::String(i.to_string()),
        (Conv::String, V::Uint(u)) => V::String(u.to_string()),
        (Conv::String, V::Double(d)) => V::String(d.to_string()),
        (Conv::String, V::Bool(b)) => V::String(b.to_string()),
        (Conv::String, V::String(s)) => V::String(s),
        _ => return Err(no_such_overload()),
    })
}
