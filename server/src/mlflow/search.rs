//! MLflow's run search language: `filter` (comparisons joined by `AND`) and `order_by`, evaluated
//! over runs already loaded into memory (a lab's runs fit; this keeps MLflow's exact semantics,
//! such as "a run without the key never matches", without translating them to two SQL dialects).

use std::cmp::Ordering;

use super::protocol::{MlflowError, RunRecord};

/// What a comparison reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Metric(String),
    Param(String),
    Tag(String),
    /// `run_id`, `run_name`, `status`, `user_id`, `artifact_uri`, `start_time`, `end_time`.
    Attribute(Attribute),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    RunId,
    RunName,
    Status,
    UserId,
    ArtifactUri,
    StartTime,
    EndTime,
}

/// What is searched: attribute names differ (an experiment's `name` and `creation_time` are read
/// through the same record fields as a run's `run_name` and `start_time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Runs,
    Experiments,
}

impl Attribute {
    fn parse(name: &str, target: Target) -> Option<Attribute> {
        if target == Target::Experiments {
            return match name {
                "name" => Some(Attribute::RunName),
                "creation_time" => Some(Attribute::StartTime),
                "last_update_time" => Some(Attribute::EndTime),
                _ => None,
            };
        }
        Some(match name {
            "run_id" => Attribute::RunId,
            "run_name" => Attribute::RunName,
            "status" => Attribute::Status,
            "user_id" => Attribute::UserId,
            "artifact_uri" => Attribute::ArtifactUri,
            "start_time" | "created" | "Created" => Attribute::StartTime,
            "end_time" => Attribute::EndTime,
            _ => return None,
        })
    }

    fn is_numeric(self) -> bool {
        matches!(self, Attribute::StartTime | Attribute::EndTime)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Like,
    ILike,
    In,
    NotIn,
    IsNull,
    IsNotNull,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Number(f64),
    Text(String),
    List(Vec<String>),
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub field: Field,
    pub op: Op,
    pub value: Operand,
}

/// A parsed filter: every comparison must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter(pub Vec<Comparison>);

fn invalid(message: impl Into<String>) -> MlflowError {
    MlflowError::invalid(message)
}

// ---------- tokens ----------

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(f64),
    Sym(String),
    LParen,
    RParen,
    Comma,
}

fn tokenize(text: &str) -> Result<Vec<Token>, MlflowError> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::LParen);
                i += 1;
            }
            ')' => {
                out.push(Token::RParen);
                i += 1;
            }
            ',' => {
                out.push(Token::Comma);
                i += 1;
            }
            '\'' | '"' => {
                let (s, next) = quoted(&chars, i)?;
                out.push(Token::Str(s));
                i = next;
            }
            '=' | '!' | '<' | '>' => {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let sym = if ["!=", "<=", ">=", "=="].contains(&two.as_str()) { two } else { c.to_string() };
                if sym == "!" {
                    return Err(invalid(format!("unexpected '!' at position {i} of the filter")));
                }
                i += sym.chars().count();
                out.push(Token::Sym(if sym == "==" { "=".into() } else { sym }));
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '-' | '+')) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let n = word.parse::<f64>().map_err(|_| invalid(format!("'{word}' is not a number")))?;
                out.push(Token::Num(n));
            }
            _ => {
                // An identifier: letters, digits, '_', '.', and back-quoted parts (`my key`).
                let start = i;
                let mut ident = String::new();
                while i < chars.len() && !chars[i].is_whitespace() && !"()=!<>,'\"".contains(chars[i]) {
                    if chars[i] == '`' {
                        let end = chars[i + 1..]
                            .iter()
                            .position(|&c| c == '`')
                            .ok_or_else(|| invalid("an unclosed ` in the filter"))?;
                        ident.extend(&chars[i + 1..i + 1 + end]);
                        i += end + 2;
                    } else {
                        ident.push(chars[i]);
                        i += 1;
                    }
                }
                // `metrics."my key"`: a quoted key after the entity prefix.
                if ident.ends_with('.') && i < chars.len() && (chars[i] == '"' || chars[i] == '\'') {
                    let (s, next) = quoted(&chars, i)?;
                    ident.push_str(&s);
                    i = next;
                }
                if i == start {
                    return Err(invalid(format!("unexpected '{}' in the filter", chars[i])));
                }
                out.push(Token::Ident(ident));
            }
        }
    }
    Ok(out)
}

fn quoted(chars: &[char], start: usize) -> Result<(String, usize), MlflowError> {
    let q = chars[start];
    let mut s = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == q {
            // A doubled quote is a literal quote.
            if i + 1 < chars.len() && chars[i + 1] == q {
                s.push(q);
                i += 2;
                continue;
            }
            return Ok((s, i + 1));
        }
        s.push(chars[i]);
        i += 1;
    }
    Err(invalid("an unclosed string in the filter"))
}

// ---------- parsing ----------

/// `metrics.acc`, `params.lr`, `tags."a b"`, `attributes.status`, `status` (no prefix: an attribute).
pub fn parse_field(ident: &str) -> Result<Field, MlflowError> {
    parse_field_for(ident, Target::Runs)
}

fn parse_field_for(ident: &str, target: Target) -> Result<Field, MlflowError> {
    let (entity, key) = match ident.split_once('.') {
        Some((e, k)) => (e, k),
        None => ("attributes", ident),
    };
    if key.is_empty() {
        return Err(invalid(format!("'{ident}' names no key")));
    }
    match entity {
        "metric" | "metrics" | "param" | "params" | "parameter" | "parameters" if target == Target::Experiments => {
            Err(invalid(format!("'{ident}': experiments are searched by name, creation_time, last_update_time and tags")))
        }
        "metric" | "metrics" => Ok(Field::Metric(key.into())),
        "param" | "params" | "parameter" | "parameters" => Ok(Field::Param(key.into())),
        "tag" | "tags" => Ok(Field::Tag(key.into())),
        "attribute" | "attributes" | "attr" | "run" => {
            Attribute::parse(key, target).map(Field::Attribute).ok_or_else(|| {
                invalid(match target {
                    Target::Runs => format!(
                        "invalid attribute key '{key}': expected run_id, run_name, status, user_id, artifact_uri, start_time, end_time or created"
                    ),
                    Target::Experiments => {
                        format!("invalid attribute key '{key}': expected name, creation_time or last_update_time")
                    }
                })
            })
        }
        other => Err(invalid(format!(
            "invalid entity type '{other}' in '{ident}': expected metrics, params, tags or attributes"
        ))),
    }
}

pub fn parse_filter(text: &str) -> Result<Filter, MlflowError> {
    parse_filter_for(text, Target::Runs)
}

pub fn parse_filter_for(text: &str, target: Target) -> Result<Filter, MlflowError> {
    let tokens = tokenize(text)?;
    let mut comparisons = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if !comparisons.is_empty() {
            match &tokens[i] {
                Token::Ident(w) if w.eq_ignore_ascii_case("and") => i += 1,
                Token::Ident(w) if w.eq_ignore_ascii_case("or") => {
                    return Err(invalid("OR is not supported in a search filter (MLflow joins comparisons with AND)"))
                }
                other => return Err(invalid(format!("expected AND between comparisons, got {other:?}"))),
            }
        }
        let (comparison, next) = parse_comparison(&tokens, i, target)?;
        comparisons.push(comparison);
        i = next;
    }
    Ok(Filter(comparisons))
}

fn parse_comparison(tokens: &[Token], i: usize, target: Target) -> Result<(Comparison, usize), MlflowError> {
    let Some(Token::Ident(ident)) = tokens.get(i) else {
        return Err(invalid("expected an identifier such as metrics.acc, params.lr or attributes.status"));
    };
    let field = parse_field_for(ident, target)?;
    let word = |j: usize| match tokens.get(j) {
        Some(Token::Ident(w)) => Some(w.to_ascii_uppercase()),
        _ => None,
    };
    let (op, mut j) = match (tokens.get(i + 1), word(i + 1).as_deref(), word(i + 2).as_deref()) {
        (Some(Token::Sym(s)), _, _) => (
            match s.as_str() {
                "=" => Op::Eq,
                "!=" => Op::Ne,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                "<" => Op::Lt,
                "<=" => Op::Le,
                other => return Err(invalid(format!("unknown comparator '{other}'"))),
            },
            i + 2,
        ),
        (_, Some("LIKE"), _) => (Op::Like, i + 2),
        (_, Some("ILIKE"), _) => (Op::ILike, i + 2),
        (_, Some("IN"), _) => (Op::In, i + 2),
        (_, Some("NOT"), Some("IN")) => (Op::NotIn, i + 3),
        (_, Some("IS"), Some("NULL")) => (Op::IsNull, i + 3),
        (_, Some("IS"), Some("NOT")) if word(i + 3).as_deref() == Some("NULL") => (Op::IsNotNull, i + 4),
        _ => return Err(invalid(format!("expected a comparator after '{ident}'"))),
    };
    let value = match op {
        Op::IsNull | Op::IsNotNull => Operand::None,
        Op::In | Op::NotIn => {
            if tokens.get(j) != Some(&Token::LParen) {
                return Err(invalid("IN takes a parenthesized list of strings, e.g. ('a', 'b')"));
            }
            j += 1;
            let mut items = Vec::new();
            loop {
                match tokens.get(j) {
                    Some(Token::Str(s)) => items.push(s.clone()),
                    _ => return Err(invalid("IN takes a parenthesized list of strings, e.g. ('a', 'b')")),
                }
                j += 1;
                match tokens.get(j) {
                    Some(Token::Comma) => j += 1,
                    Some(Token::RParen) => break,
                    _ => return Err(invalid("an unclosed IN list")),
                }
            }
            j += 1;
            Operand::List(items)
        }
        _ => {
            let v = match tokens.get(j) {
                Some(Token::Str(s)) => Operand::Text(s.clone()),
                Some(Token::Num(n)) => Operand::Number(*n),
                _ => return Err(invalid(format!("expected a value after the comparator for '{ident}'"))),
            };
            j += 1;
            v
        }
    };
    check_types(&field, op, &value, ident)?;
    Ok((Comparison { field, op, value }, j))
}

fn check_types(field: &Field, op: Op, value: &Operand, ident: &str) -> Result<(), MlflowError> {
    let numeric = match field {
        Field::Metric(_) => true,
        Field::Attribute(a) => a.is_numeric(),
        Field::Param(_) | Field::Tag(_) => false,
    };
    let ok = match (numeric, op, value) {
        (_, Op::IsNull | Op::IsNotNull, _) => !numeric,
        (true, Op::Eq | Op::Ne | Op::Gt | Op::Ge | Op::Lt | Op::Le, Operand::Number(_)) => true,
        (false, Op::Eq | Op::Ne | Op::Like | Op::ILike, Operand::Text(_)) => true,
        (false, Op::In | Op::NotIn, Operand::List(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else if numeric {
        Err(invalid(format!("'{ident}' is numeric: compare it with =, !=, <, <=, > or >= and a number")))
    } else {
        Err(invalid(format!(
            "'{ident}' is a string: compare it with =, !=, LIKE, ILIKE (a quoted string), IN / NOT IN (a list), or IS [NOT] NULL"
        )))
    }
}

// ---------- evaluation ----------

/// A value of a run as a comparison sees it.
enum Seen<'a> {
    Number(f64),
    Text(&'a str),
    Missing,
}

fn lookup<'a>(run: &'a RunRecord, field: &Field) -> Seen<'a> {
    match field {
        Field::Metric(k) => run.metrics.get(k).map_or(Seen::Missing, |v| Seen::Number(*v)),
        Field::Param(k) => run.params.get(k).map_or(Seen::Missing, |v| Seen::Text(v)),
        Field::Tag(k) => run.tags.get(k).map_or(Seen::Missing, |v| Seen::Text(v)),
        Field::Attribute(a) => match a {
            Attribute::RunId => Seen::Text(&run.run_id),
            Attribute::RunName => Seen::Text(&run.run_name),
            Attribute::Status => Seen::Text(&run.status),
            Attribute::UserId => Seen::Text(&run.user_id),
            Attribute::ArtifactUri => Seen::Text(&run.artifact_uri),
            Attribute::StartTime => run.start_time.map_or(Seen::Missing, |t| Seen::Number(t as f64)),
            Attribute::EndTime => run.end_time.map_or(Seen::Missing, |t| Seen::Number(t as f64)),
        },
    }
}

/// SQL LIKE: `%` any run of characters, `_` one character.
pub fn like(text: &str, pattern: &str, case_insensitive: bool) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = if case_insensitive {
        (text.to_lowercase().chars().collect(), pattern.to_lowercase().chars().collect())
    } else {
        (text.chars().collect(), pattern.chars().collect())
    };
    // Iterative wildcard match with backtracking to the last '%'.
    let (mut ti, mut pi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '%' {
        pi += 1;
    }
    pi == p.len()
}

impl Comparison {
    fn holds(&self, run: &RunRecord) -> bool {
        let seen = lookup(run, &self.field);
        match (&self.op, seen, &self.value) {
            (Op::IsNull, Seen::Missing, _) => true,
            (Op::IsNull, _, _) => false,
            (Op::IsNotNull, Seen::Missing, _) => false,
            (Op::IsNotNull, _, _) => true,
            (_, Seen::Missing, _) => false,
            (op, Seen::Number(x), Operand::Number(y)) => match op {
                // NaN compares false with everything, as in SQL.
                Op::Eq => x == *y,
                Op::Ne => x != *y && !x.is_nan(),
                Op::Gt => x > *y,
                Op::Ge => x >= *y,
                Op::Lt => x < *y,
                Op::Le => x <= *y,
                _ => false,
            },
            (Op::Eq, Seen::Text(s), Operand::Text(v)) => s == v,
            (Op::Ne, Seen::Text(s), Operand::Text(v)) => s != v,
            (Op::Like, Seen::Text(s), Operand::Text(v)) => like(s, v, false),
            (Op::ILike, Seen::Text(s), Operand::Text(v)) => like(s, v, true),
            (Op::In, Seen::Text(s), Operand::List(vs)) => vs.iter().any(|v| v == s),
            (Op::NotIn, Seen::Text(s), Operand::List(vs)) => !vs.iter().any(|v| v == s),
            _ => false,
        }
    }
}

impl Filter {
    pub fn matches(&self, run: &RunRecord) -> bool {
        self.0.iter().all(|c| c.holds(run))
    }
}

// ---------- ordering ----------

#[derive(Debug, Clone, PartialEq)]
pub struct OrderBy {
    pub field: Field,
    pub ascending: bool,
}

pub fn parse_order_by(text: &str) -> Result<OrderBy, MlflowError> {
    let text = text.trim();
    let (ident, direction) = match text.rsplit_once(char::is_whitespace) {
        Some((ident, dir)) if dir.eq_ignore_ascii_case("asc") || dir.eq_ignore_ascii_case("desc") => {
            (ident.trim(), Some(dir))
        }
        _ => (text, None),
    };
    let tokens = tokenize(ident)?;
    let [Token::Ident(name)] = tokens.as_slice() else {
        return Err(invalid(format!("invalid order_by clause '{text}': expected e.g. 'metrics.acc DESC'")));
    };
    let ascending = !direction.is_some_and(|d| d.eq_ignore_ascii_case("desc"));
    Ok(OrderBy { field: parse_field(name)?, ascending })
}

fn compare_seen(a: &Seen, b: &Seen) -> Ordering {
    match (a, b) {
        (Seen::Number(x), Seen::Number(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Seen::Text(x), Seen::Text(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// A value is "absent" for ordering when it is missing or NaN: such runs go last either way.
fn absent(s: &Seen) -> bool {
    matches!(s, Seen::Missing) || matches!(s, Seen::Number(x) if x.is_nan())
}

/// Sorts by the clauses in turn, then (as MLflow does) newest start time first, then run id.
pub fn sort(runs: &mut [RunRecord], order: &[OrderBy]) {
    sort_by_record(runs, |r| r, order)
}

/// [`sort`] for items that hold a record.
pub fn sort_by_record<T>(items: &mut [T], record: impl Fn(&T) -> &RunRecord, order: &[OrderBy]) {
    items.sort_by(|a, b| {
        let (a, b) = (record(a), record(b));
        for o in order {
            let (x, y) = (lookup(a, &o.field), lookup(b, &o.field));
            let ord = match (absent(&x), absent(&y)) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    let ord = compare_seen(&x, &y);
                    if o.ascending {
                        ord
                    } else {
                        ord.reverse()
                    }
                }
            };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        b.start_time.cmp(&a.start_time).then_with(|| a.run_id.cmp(&b.run_id))
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn run(id: &str, acc: Option<f64>, lr: &str, tag: &str, status: &str, start: i64) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            run_name: format!("run-{id}"),
            status: status.into(),
            user_id: "ana".into(),
            artifact_uri: String::new(),
            start_time: Some(start),
            end_time: None,
            metrics: acc.map(|a| BTreeMap::from([("acc".to_string(), a)])).unwrap_or_default(),
            params: BTreeMap::from([("lr".to_string(), lr.to_string())]),
            tags: BTreeMap::from([("family".to_string(), tag.to_string())]),
        }
    }

    fn ids(filter: &str, runs: &[RunRecord]) -> Vec<String> {
        let f = parse_filter(filter).unwrap();
        runs.iter().filter(|r| f.matches(r)).map(|r| r.run_id.clone()).collect()
    }

    #[test]
    fn filters_follow_mlflow() {
        let runs = vec![
            run("1", Some(0.9), "0.01", "ResNet", "FINISHED", 10),
            run("2", Some(0.5), "0.1", "resnet-small", "FAILED", 20),
            run("3", None, "0.01", "LeNet", "RUNNING", 30),
            run("4", Some(f64::NAN), "0.001", "lenet", "FINISHED", 40),
        ];
        assert_eq!(ids("metrics.acc > 0.6", &runs), ["1"]);
        assert_eq!(ids("metrics.acc != 0.9", &runs), ["2"], "missing and NaN never match");
        assert_eq!(ids("params.lr = '0.01'", &runs), ["1", "3"]);
        assert_eq!(ids("params.lr = \"0.01\" and attributes.status = 'RUNNING'", &runs), ["3"]);
        assert_eq!(ids("tags.family LIKE 'res%'", &runs), ["2"]);
        assert_eq!(ids("tags.family ILIKE 'res%'", &runs), ["1", "2"]);
        assert_eq!(ids("tags.family LIKE '_eNet'", &runs), ["3"]);
        assert_eq!(ids("status IN ('FAILED', 'RUNNING')", &runs), ["2", "3"]);
        assert_eq!(ids("attributes.status NOT IN ('FINISHED')", &runs), ["2", "3"]);
        assert_eq!(ids("attributes.start_time >= 20 AND attributes.start_time < 40", &runs), ["2", "3"]);
        assert_eq!(ids("run_name = 'run-4'", &runs), ["4"]);
        assert_eq!(ids("tags.missing IS NULL AND tags.family IS NOT NULL", &runs).len(), 4);
        assert_eq!(ids("metrics.`acc` >= 0.5", &runs), ["1", "2"]);
        assert_eq!(ids("", &runs).len(), 4);
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        for (bad, says) in [
            ("metrics.acc > 'x'", "numeric"),
            ("params.lr > 1", "string"),
            ("foo.bar = 'x'", "invalid entity type"),
            ("attributes.color = 'x'", "invalid attribute key"),
            ("metrics.acc > 1 OR metrics.acc < 0", "OR is not supported"),
            ("params.lr = 'unclosed", "unclosed"),
            ("params.lr IN 'a'", "parenthesized"),
        ] {
            let e = parse_filter(bad).unwrap_err();
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn like_matches_sql() {
        assert!(like("abc", "a%", false));
        assert!(like("abc", "%c", false));
        assert!(like("abc", "a_c", false));
        assert!(!like("abc", "a_", false));
        assert!(like("a%c", "a%%c", false));
        assert!(!like("ABC", "abc", false));
        assert!(like("ABC", "abc", true));
        assert!(like("", "%", false));
    }

    #[test]
    fn ordering_puts_missing_last_both_ways() {
        let mut runs = vec![
            run("1", Some(0.9), "0.01", "a", "FINISHED", 10),
            run("2", None, "0.1", "b", "FINISHED", 20),
            run("3", Some(0.5), "0.01", "c", "FINISHED", 30),
        ];
        sort(&mut runs, &[parse_order_by("metrics.acc DESC").unwrap()]);
        assert_eq!(runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["1", "3", "2"]);
        sort(&mut runs, &[parse_order_by("metrics.acc").unwrap()]);
        assert_eq!(runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["3", "1", "2"]);
        sort(&mut runs, &[parse_order_by("params.lr ASC").unwrap(), parse_order_by("tags.family desc").unwrap()]);
        assert_eq!(runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["3", "1", "2"]);
        sort(&mut runs, &[]);
        assert_eq!(runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["3", "2", "1"], "newest first");
        assert!(parse_order_by("metrics.acc sideways").is_err());
    }
}
