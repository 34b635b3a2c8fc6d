//! Importing certification results made elsewhere: the per-image TSV that the reference codes'
//! `certify.py` writes (`locuslab/smoothing` and the repositories built on it), one header line
//! `idx label predict radius correct time` (separated by tabs) and one line per image:
//!
//! ```text
//! 18<TAB>3<TAB>8<TAB>0.113<TAB>0<TAB>0:00:00.298846
//! ```
//!
//! `predict` is -1 when the smoothed classifier abstains (radius 0 then), `correct` is
//! `int(predict == label)`, `radius` is printed with three significant digits (`0.0228`, `1e-05`)
//! and `time` is Python's `str(datetime.timedelta)`: `H:MM:SS.ffffff`, without the fraction when
//! it is zero. The file is read strictly: the first bad line is an error naming its line number,
//! the column and what was expected, and nothing is stored.

use std::collections::HashMap;

use crt_trainer::events::Certificate;

/// The header line the reference codes write.
pub const HEADER: [&str; 6] = ["idx", "label", "predict", "radius", "correct", "time"];
/// The largest file accepted, in bytes.
pub const MAX_TSV_BYTES: usize = 8 << 20;
/// The most image lines accepted.
pub const MAX_TSV_ROWS: usize = 100_000;

/// What is wrong with an uploaded file, and where: `line` is 1-based (the header is line 1),
/// `column` one of [`HEADER`] when a single field is to blame.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError {
    pub line: usize,
    pub column: Option<&'static str>,
    pub message: String,
    /// The file is over [`MAX_TSV_ROWS`] (413 rather than 422).
    pub too_large: bool,
}

impl LineError {
    fn at(line: usize, column: Option<&'static str>, message: impl Into<String>) -> Self {
        LineError { line, column, message: message.into(), too_large: false }
    }
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.column {
            Some(c) => write!(f, "line {}, column {c}: {}", self.line, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

/// Reads a reference certification file into one certificate per image, in file order.
pub fn parse_reference_tsv(bytes: &[u8]) -> Result<Vec<Certificate>, LineError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        LineError::at(line, None, "is not UTF-8 text")
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).enumerate().peekable();
    let header = lines.next().map(|(_, l)| l).unwrap_or("");
    if header.split('\t').ne(HEADER) {
        return Err(LineError::at(
            1,
            None,
            format!(
                "expected the header 'idx<TAB>label<TAB>predict<TAB>radius<TAB>correct<TAB>time' (certify.py's), got '{}'",
                shorten(header)
            ),
        ));
    }
    let mut certs = Vec::new();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    while let Some((i, line)) = lines.next() {
        let number = i + 1;
        if line.is_empty() {
            // A final newline ends the file; an empty line anywhere else is an error.
            if lines.peek().is_none() {
                break;
            }
            return Err(LineError::at(number, None, "is empty; expected an image line"));
        }
        if certs.len() == MAX_TSV_ROWS {
            return Err(LineError {
                too_large: true,
                ..LineError::at(number, None, format!("the file has more than {MAX_TSV_ROWS} image lines"))
            });
        }
        let cert = parse_row(number, line)?;
        if let Some(first) = seen.insert(cert.idx, number) {
            return Err(LineError::at(
                number,
                Some("idx"),
                format!("expected each image once; image {} is already on line {first}", cert.idx),
            ));
        }
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(LineError::at(2, None, "the file has a header but no image lines"));
    }
    Ok(certs)
}

fn parse_row(line: usize, text: &str) -> Result<Certificate, LineError> {
    let fields: Vec<&str> = text.split('\t').collect();
    if fields.len() != HEADER.len() {
        return Err(LineError::at(
            line,
            None,
            format!("expected 6 tab-separated fields (idx label predict radius correct time), got {}", fields.len()),
        ));
    }
    let err = |column: &'static str, expected: &str| {
        LineError::at(
            line,
            Some(column),
            format!("expected {expected}, got '{}'", shorten(fields[column_index(column)])),
        )
    };
    let idx: u64 = integer(fields[0])
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| err("idx", "an image index (an integer ≥ 0)"))?;
    let label: i64 = integer(fields[1]).filter(|v| *v >= 0).ok_or_else(|| err("label", "a class (an integer ≥ 0)"))?;
    let predict: i64 = integer(fields[2])
        .filter(|v| *v >= -1)
        .ok_or_else(|| err("predict", "a class (an integer ≥ 0) or -1 (abstain)"))?;
    let radius: f64 = fields[3]
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0 && !fields[3].starts_with('+'))
        .ok_or_else(|| err("radius", "a finite number ≥ 0"))?;
    if predict == -1 && radius != 0.0 {
        return Err(err("radius", "0 on an abstention (predict -1)"));
    }
    let correct = match fields[4] {
        "0" => false,
        "1" => true,
        _ => return Err(err("correct", "0 or 1")),
    };
    if correct != (predict == label) {
        let want = if predict == label { "1 (predict equals label)" } else { "0 (predict differs from label)" };
        return Err(err("correct", want));
    }
    let time = duration(fields[5]).ok_or_else(|| err("time", "a duration H:MM:SS.ffffff, e.g. 0:00:01.250000"))?;
    Ok(Certificate {
        idx,
        label,
        predict,
        radius: Some(radius),
        correct,
        count_a: None,
        p_lower: None,
        time,
        samples: None,
        decision: None,
        p_upper: None,
    })
}

fn column_index(column: &str) -> usize {
    HEADER.iter().position(|c| *c == column).expect("a column of the header")
}

/// A plain decimal integer (an optional '-', then digits).
fn integer(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Seconds of Python's `str(timedelta)` under a day: `H:MM:SS` with an optional `.f` of 1 to 6
/// digits.
pub fn duration(s: &str) -> Option<f64> {
    let mut parts = s.split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (whole, frac) = match sec.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (sec, None),
    };
    let digits =
        |t: &str, min: usize, max: usize| (min..=max).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(h, 1, 2) || !digits(m, 2, 2) || !digits(whole, 2, 2) || frac.is_some_and(|f| !digits(f, 1, 6)) {
        return None;
    }
    let (h, m, whole): (u32, u32, u32) = (h.parse().ok()?, m.parse().ok()?, whole.parse().ok()?);
    if h > 23 || m > 59 || whole > 59 {
        return None;
    }
    let frac: f64 = frac.map(|f| format!("0.{f}").parse().unwrap_or(0.0)).unwrap_or(0.0);
    Some(f64::from(h * 3600 + m * 60 + whole) + frac)
}

/// A field or header as quoted in an error message: at most 40 characters.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 40 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(40).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n";

    fn parse(body: &str) -> Result<Vec<Certificate>, LineError> {
        parse_reference_tsv(format!("{HEAD}{body}").as_bytes())
    }

    #[test]
    fn reads_the_reference_format() {
        let certs =
            parse("0\t7\t7\t0.953\t1\t0:00:00.579953\n18\t3\t8\t0.113\t0\t0:00:00.298846\n5\t2\t-1\t0.0\t0\t0:00:01\n")
                .unwrap();
        assert_eq!(certs.len(), 3);
        assert_eq!((certs[0].idx, certs[0].label, certs[0].predict, certs[0].correct), (0, 7, 7, true));
        assert_eq!(certs[0].radius, Some(0.953));
        assert!((certs[0].time - 0.579953).abs() < 1e-12);
        assert_eq!((certs[1].predict, certs[1].correct), (8, false));
        assert_eq!((certs[2].predict, certs[2].radius, certs[2].time), (-1, Some(0.0), 1.0));
        assert_eq!(duration("1:02:03.5"), Some(3723.5));
        assert_eq!(parse("1\t2\t2\t1e-05\t1\t0:00:00.1\r\n").unwrap()[0].radius, Some(1e-5));
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let e = |body: &str| parse(body).unwrap_err();
        let at = |err: LineError| (err.line, err.column);
        assert_eq!(at(e("0\t7\t7\tabc\t1\t0:00:00.1\n")), (2, Some("radius")));
        assert_eq!(at(e("0\t7\t7\t0.5\t1\t0:00:00.1\n1\t7\t7\t-0.5\t1\t0:00:00.1\n")), (3, Some("radius")));
        assert_eq!(at(e("0\t7\t7\tNaN\t1\t0:00:00.1\n")), (2, Some("radius")));
        assert_eq!(at(e("0\t7\t-1\t0.5\t0\t0:00:00.1\n")), (2, Some("radius")));
        assert_eq!(at(e("0\t7\t7\t0.5\t0\t0:00:00.1\n")), (2, Some("correct")));
        assert_eq!(at(e("0\t7\t3\t0.5\t1\t0:00:00.1\n")), (2, Some("correct")));
        assert_eq!(at(e("0\t7\t7\t0.5\t1\t00:00.1\n")), (2, Some("time")));
        assert_eq!(at(e("0\t7\t7\t0.5\t1\t0:00:61.1\n")), (2, Some("time")));
        assert_eq!(at(e("0\t7\t7\t0.5\t1\t0:00:00.1234567\n")), (2, Some("time")));
        assert_eq!(at(e("x\t7\t7\t0.5\t1\t0:00:00.1\n")), (2, Some("idx")));
        assert_eq!(at(e("0\t7.0\t7\t0.5\t1\t0:00:00.1\n")), (2, Some("label")));
        assert_eq!(at(e("0\t7\t-2\t0.5\t0\t0:00:00.1\n")), (2, Some("predict")));
        assert_eq!(at(e("0\t7\t7\t0.5\t1\n")), (2, None));
        assert_eq!(at(e("0\t7\t7\t0.5\t1\t0:00:00.1\n\n1\t7\t7\t0.5\t1\t0:00:00.1\n")), (3, None));
        assert_eq!(at(e("3\t7\t7\t0.5\t1\t0:00:00.1\n3\t7\t7\t0.5\t1\t0:00:00.1\n")), (3, Some("idx")));
        assert_eq!(at(e("")), (2, None));
        let header = parse_reference_tsv(b"idx label predict radius correct time\n0\t7\t7\t0.5\t1\t0:00:00.1\n");
        assert_eq!(at(header.unwrap_err()), (1, None));
        let msg = e("0\t7\t7\t-0.5\t1\t0:00:00.1\n").to_string();
        assert_eq!(msg, "line 2, column radius: expected a finite number ≥ 0, got '-0.5'");
    }

    #[test]
    fn too_many_rows_is_too_large() {
        let mut body = String::from(HEAD);
        for i in 0..=MAX_TSV_ROWS {
            body.push_str(&format!("{i}\t1\t1\t0.5\t1\t0:00:00.1\n"));
        }
        let err = parse_reference_tsv(body.as_bytes()).unwrap_err();
        assert!(err.too_large);
        assert_eq!(err.line, MAX_TSV_ROWS + 2);
    }
}
