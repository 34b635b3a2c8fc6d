//! The per-image tables, `certify.tsv` and `predict.tsv`: tab-separated, one header line, one row
//! per image, flushed row by row so a partial run (stopped, or still going) leaves readable rows.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::events::Certificate;

pub const CERTIFY_FILE: &str = "certify.tsv";
pub const PREDICT_FILE: &str = "predict.tsv";
pub const CERTIFY_COLUMNS: [&str; 8] = ["idx", "label", "predict", "radius", "correct", "count_a", "p_lower", "time"];
pub const PREDICT_COLUMNS: [&str; 5] = ["idx", "label", "predict", "correct", "time"];

/// Which of the two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Certify,
    Predict,
}

impl Table {
    pub fn file_name(self) -> &'static str {
        match self {
            Table::Certify => CERTIFY_FILE,
            Table::Predict => PREDICT_FILE,
        }
    }

    fn columns(self) -> &'static [&'static str] {
        match self {
            Table::Certify => &CERTIFY_COLUMNS,
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
            Table::Predict => format!("{}\t{}\t{}\t{}\t{:.4}", c.idx, c.label, c.predict, correct, c.time),
        }
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
