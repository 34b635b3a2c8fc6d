//! The per-image tables, `certify.tsv` and `predict.tsv`: tab-separated, one header line, one row
//! per image, flushed row by row so a partial run (stopped, or still going) leaves readable rows.
//! A resumed run reads the complete rows back ([`TableWriter::resume`]) and appends to them.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::events::Certificate;

pub const CERTIFY_FILE: &str = "certify.tsv";
pub const PREDICT_FILE: &str = "predict.tsv";
pub const CERTIFY_COLUMNS: [&str; 8] = ["idx", "label", "predict", "radius", "correct", "count_a", "p_lower", "time"];
/// `certify.tsv` of a sequential mode: CERTIFY's columns, then the samples drawn, the decision and
/// the upper bound on the top class's probability (fixed-N tables keep their eight columns).
pub const CERTIFY_SEQUENTIAL_COLUMNS: [&str; 11] =
    ["idx", "label", "predict", "radius", "correct", "count_a", "p_lower", "time", "samples", "decision", "p_upper"];
pub const PREDICT_COLUMNS: [&str; 5] = ["idx", "label", "predict", "correct", "time"];

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Certify,
    /// `certify.tsv` of a sequential mode (three more columns).
    CertifySequential,
    Predict,
}

impl Table {
    pub fn file_name(self) -> &'static str {
        match self {
            Table::Certify | Table::CertifySequential => CERTIFY_FILE,
            Table::Predict => PREDICT_FILE,
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            Table::Certify => &CERTIFY_COLUMNS,
            Table::CertifySequential => &CERTIFY_SEQUENTIAL_COLUMNS,
            Table::Predict => &PREDICT_COLUMNS,
        }
    }

    /// One row; floats in Rust's shortest round-trip form, `correct` as 0/1 (as Cohen et al.'s files).
    fn row(self, c: &Certificate) -> String {
        let correct = u8::from(c.correct);
        match self {
            Table::Certify => format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.4}",
                c.idx,
                c.label,
                c.predict,
                c.radius.unwrap_or(0.0),
                correct,
                c.count_a.unwrap_or(0),
                c.p_lower.unwrap_or(0.0),
                c.time
            ),
            Table::CertifySequential => format!(
                "{}\t{}\t{}\t{}",
                Table::Certify.row(c),
                c.samples.unwrap_or(0),
                c.decision.as_deref().unwrap_or(""),
                c.p_upper.unwrap_or(1.0)
            ),
            Table::Predict => format!("{}\t{}\t{}\t{}\t{:.4}", c.idx, c.label, c.predict, correct, c.time),
        }
    }

    /// One row read back (PREDICT rows have no radius, count_a or p_lower).
    pub fn parse_row(self, line: &str) -> Option<Certificate> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != self.columns().len() {
            return None;
        }
        let correct = |s: &str| match s {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        };
        let (idx, label, predict) = (f[0].parse().ok()?, f[1].parse().ok()?, f[2].parse().ok()?);
        Some(match self {
            Table::Certify => Certificate {
                idx,
                label,
                predict,
                radius: Some(f[3].parse().ok()?),
                correct: correct(f[4])?,
                count_a: Some(f[5].parse().ok()?),
                p_lower: Some(f[6].parse().ok()?),
                time: f[7].parse().ok()?,
                ..Certificate::default()
            },
            Table::CertifySequential => {
                let decision = f[9];
                super::sequential::Decision::parse(decision)?;
                Certificate {
                    samples: Some(f[8].parse().ok()?),
                    decision: Some(decision.to_string()),
                    p_upper: Some(f[10].parse().ok()?),
                    ..Table::Certify.parse_row(&f[..8].join("\t"))?
                }
            }
            Table::Predict => Certificate {
                idx,
                label,
                predict,
                radius: None,
                correct: correct(f[3])?,
                count_a: None,
                p_lower: None,
                time: f[4].parse().ok()?,
                ..Certificate::default()
            },
        })
    }

    /// The complete rows of a table's text and the length in bytes of the header and those rows.
    /// A last line without its newline (a write cut short) is left out; None when not even the
    /// header is complete. Fails on a complete line that is not a row of this table.
    pub fn read_rows(self, text: &str) -> anyhow::Result<Option<(Vec<Certificate>, usize)>> {
        let Some(header_end) = text.find('\n') else { return Ok(None) };
        let header = &text[..header_end];
        let expected = self.columns().join("\t");
        if header != expected {
            anyhow::bail!("{}: header is {header:?}, expected {expected:?}", self.file_name());
        }
        let mut rows = Vec::new();
        let mut end = header_end + 1;
        while let Some(len) = text[end..].find('\n') {
            let line = &text[end..end + len];
            let row = self.parse_row(line).ok_or_else(|| {
                anyhow::anyhow!("{}: line {} is not a row: {line:?}", self.file_name(), rows.len() + 2)
            })?;
            rows.push(row);
            end += len + 1;
        }
        Ok(Some((rows, end)))
    }
}

pub struct TableWriter {
    table: Table,
    path: PathBuf,
    out: BufWriter<File>,
}

impl TableWriter {
    /// Creates (or truncates) the table in `dir` and writes its header.
    pub fn create(dir: &Path, table: Table) -> anyhow::Result<Self> {
        let path = dir.join(table.file_name());
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut writer = TableWriter { table, path, out: BufWriter::new(file) };
        writer.line(&table.columns().join("\t"))?;
        Ok(writer)
    }

    /// Continues the table in `dir`: returns its complete rows and a writer that appends after
    /// them, a partial last line cut away. A missing (or header-less) table is created afresh.
    pub fn resume(dir: &Path, table: Table) -> anyhow::Result<(Self, Vec<Certificate>)> {
        let path = dir.join(table.file_name());
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let Some((rows, valid)) =
            table.read_rows(&text).with_context(|| format!("cannot resume {}", path.display()))?
        else {
            return Ok((TableWriter::create(dir, table)?, Vec::new()));
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_len(valid as u64).map(|()| f))
            .with_context(|| format!("cannot append to {}", path.display()))?;
        Ok((TableWriter { table, path, out: BufWriter::new(file) }, rows))
    }

    pub fn write(&mut self, c: &Certificate) -> anyhow::Result<()> {
        self.line(&self.table.row(c))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn line(&mut self, text: &str) -> anyhow::Result<()> {
        writeln!(self.out, "{text}")
            .and_then(|()| self.out.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(idx: u64) -> Certificate {
        Certificate {
            idx,
            label: 3,
            predict: 3,
            radius: Some(0.123456789),
            correct: true,
            count_a: Some(97),
            p_lower: Some(0.912345678901),
            time: 0.5,
            ..Certificate::default()
        }
    }

    #[test]
    fn rows_read_back_and_a_partial_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TableWriter::create(dir.path(), Table::Certify).unwrap();
        for idx in [0, 10, 20] {
            w.write(&cert(idx)).unwrap();
        }
        drop(w);
        let path = dir.path().join(CERTIFY_FILE);
        let complete = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{complete}30\t3\t3\t0.1")).unwrap();

        let (mut w, rows) = TableWriter::resume(dir.path(), Table::Certify).unwrap();
        assert_eq!(rows, vec![cert(0), cert(10), cert(20)], "floats round-trip exactly");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), complete, "the partial line is cut away");
        w.write(&cert(30)).unwrap();
        drop(w);
        let text = std::fs::read_to_string(&path).unwrap();
        let (rows, len) = Table::Certify.read_rows(&text).unwrap().unwrap();
        assert_eq!(rows.iter().map(|c| c.idx).collect::<Vec<_>>(), [0, 10, 20, 30]);
        assert_eq!(len, text.len());
    }

    #[test]
    fn sequential_rows_round_trip_and_fixed_tables_stay_as_they_were() {
        let seq = Certificate {
            samples: Some(400),
            decision: Some("certified".into()),
            p_upper: Some(0.99987654321),
            ..cert(5)
        };
        let dir = tempfile::tempdir().unwrap();
        let mut w = TableWriter::create(dir.path(), Table::CertifySequential).unwrap();
        w.write(&seq).unwrap();
        drop(w);
        let (_, rows) = TableWriter::resume(dir.path(), Table::CertifySequential).unwrap();
        assert_eq!(rows, vec![seq.clone()]);
        assert!(Table::CertifySequential
            .parse_row(&Table::CertifySequential.row(&seq).replace("certified", "x"))
            .is_none());
        // A fixed-N table is not a sequential one (resuming across modes fails), and keeps 8 columns.
        assert!(TableWriter::resume(dir.path(), Table::Certify).is_err());
        assert_eq!(Table::Certify.row(&seq), Table::Certify.row(&cert(5)));
    }

    #[test]
    fn resume_without_a_table_starts_one_and_rejects_foreign_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (_, rows) = TableWriter::resume(dir.path(), Table::Predict).unwrap();
        assert!(rows.is_empty());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(PREDICT_FILE)).unwrap(),
            "idx\tlabel\tpredict\tcorrect\ttime\n"
        );
        assert!(Table::Predict.read_rows("idx\tlabel\tpredict\tcorrect\ttime\n1\t2\t2\t1\t0.1\n").unwrap().is_some());
        let err = Table::Predict.read_rows("idx\tlabel\n").unwrap_err().to_string();
        assert!(err.contains("header"), "{err}");
        let err = Table::Predict.read_rows("idx\tlabel\tpredict\tcorrect\ttime\n1\tx\t2\t1\t0.1\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(Table::Certify.read_rows("idx\tla").unwrap().is_none(), "a partial header is no table");
    }
}
