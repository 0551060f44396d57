//! The per-image tables this crate writes and reads (attack results, certified bounds):
//! one header line and one line of cells per image, through the `csv` crate.

use std::path::Path;

use crate::{EvalError, Result};

/// Writes `header` and `rows` to `path`, atomically (a failed write leaves no partial
/// file).
///
/// # Errors
/// The file cannot be written.
pub(crate) fn write_table<I, R>(path: &Path, header: &[&str], rows: I) -> Result<()>
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = String>,
{
    let mut out = csv::Writer::from_writer(Vec::new());
    let failed = |e: csv::Error| EvalError::BadFile {
        path: path.to_path_buf(),
        reason: format!("cannot format a row: {e}"),
    };
    out.write_record(header).map_err(failed)?;
    for row in rows {
        out.write_record(row).map_err(failed)?;
    }
    let bytes = out.into_inner().map_err(|e| EvalError::BadFile {
        path: path.to_path_buf(),
        reason: format!("cannot format the table: {e}"),
    })?;
    crate::error::write_file(path, &bytes)
}

/// One data row of a table: its line number in the file (for messages) and its cells.
pub(crate) struct Row {
    line: usize,
    cells: csv::StringRecord,
}

impl Row {
    /// Cell `k` parsed as a `T`, or an error naming the file, the line and the cell.
    pub(crate) fn parse<T: std::str::FromStr>(&self, path: &Path, k: usize) -> Result<T> {
        let cell = self.cells.get(k).unwrap_or("").trim();
        cell.parse().map_err(|_| EvalError::BadFile {
            path: path.to_path_buf(),
            reason: format!("line {}: {cell:?} is not a valid value", self.line),
        })
    }

    /// The line number in the file.
    pub(crate) fn line(&self) -> usize {
        self.line
    }
}

/// The data rows of the table at `path`, which must begin with `header` and have as many
/// cells on every line; blank lines are skipped.
///
/// # Errors
/// The file cannot be read, has another header, or a line of another width.
pub(crate) fn read_table(path: &Path, header: &[&str]) -> Result<Vec<Row>> {
    let bad = |reason: String| EvalError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(EvalError::io(path))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(file);
    let mut records = reader.records();
    let found = records
        .next()
        .transpose()
        .map_err(|e| bad(e.to_string()))?
        .unwrap_or_default();
    if found.iter().ne(header.iter().copied()) {
        return Err(bad(format!(
            "header {:?}, expected {:?}",
            found.iter().collect::<Vec<_>>().join(","),
            header.join(",")
        )));
    }
    let mut rows = Vec::new();
    for record in records {
        let cells = record.map_err(|e| bad(e.to_string()))?;
        let line = cells.position().map_or(0, |p| p.line() as usize);
        if cells.iter().all(str::is_empty) {
            continue;
        }
        if cells.len() != header.len() {
            return Err(bad(format!(
                "line {line}: {} cells, expected {}",
                cells.len(),
                header.len()
            )));
        }
        rows.push(Row { line, cells });
    }
    Ok(rows)
}
