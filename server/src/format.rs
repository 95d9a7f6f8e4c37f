//! Showing query answers as text: psql-style aligned tables, expanded records, and single cells.

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use chainql_executor::QueryResult;

const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";
const TIMESTAMP_TZ_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f%:z";

fn format_options() -> FormatOptions<'static> {
    FormatOptions::default()
        .with_timestamp_format(Some(TIMESTAMP_FORMAT))
        .with_timestamp_tz_format(Some(TIMESTAMP_TZ_FORMAT))
}

/// The text of one cell, or `None` for NULL.
pub fn cell_text(column: &ArrayRef, row: usize) -> Option<String> {
    // A column of type Null has no validity buffer: every value is NULL all the same.
    if column.is_null(row) || column.data_type() == &DataType::Null {
        return None;
    }
    let options = format_options();
    ArrayFormatter::try_new(column.as_ref(), &options)
        .map(|f| f.value(row).to_string())
        .ok()
}

fn is_numeric(data_type: &DataType) -> bool {
    data_type.is_numeric()
}

/// Every cell of a result as text (NULL as the empty string), row by row.
fn cells(result: &QueryResult) -> Vec<Vec<String>> {
    let options = format_options();
    let mut rows = Vec::with_capacity(result.row_count());
    for batch in &result.batches {
        let formatters: Vec<Option<ArrayFormatter>> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(column, formatter)| match formatter {
                        Some(f) if !column.is_null(row) && column.data_type() != &DataType::Null => {
                            f.value(row).to_string()
                        }
                        _ => String::new(),
                    })
                    .collect(),
            );
        }
    }
    rows
}

fn width(text: &str) -> usize {
    text.chars().count()
}

fn row_count_footer(rows: usize) -> String {
    if rows == 1 {
        "(1 row)".to_string()
    } else {
        format!("({rows} rows)")
    }
}

/// A psql-style aligned table: centred headers, numbers right-aligned, a row count.
pub fn aligned_table(result: &QueryResult) -> String {
    let fields = result.schema.fields();
    let rows = cells(result);
    let mut widths: Vec<usize> = fields.iter().map(|f| width(f.name())).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.lines().map(width).max().unwrap_or(0));
        }
    }
    let numeric: Vec<bool> = fields.iter().map(|f| is_numeric(f.data_type())).collect();
    let mut out = String::new();
    let header: Vec<String> = fields
        .iter()
        .zip(&widths)
        .map(|(f, &w)| {
            let name = f.name();
            let pad = w - width(name);
            format!("{}{}{}", " ".repeat(pad / 2), name, " ".repeat(pad - pad / 2))
        })
        .collect();
    out.push(' ');
    out.push_str(header.join(" | ").trim_end());
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+"),
    );
    out.push('\n');
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let cell = cell.replace('\n', "\\n");
                let pad = widths[i].saturating_sub(width(&cell));
                if numeric[i] {
                    format!("{}{cell}", " ".repeat(pad))
                } else {
                    format!("{cell}{}", " ".repeat(pad))
                }
            })
            .collect();
        out.push(' ');
        out.push_str(line.join(" | ").trim_end());
        out.push('\n');
    }
    out.push_str(&row_count_footer(rows.len()));
    out.push('\n');
    out
}

/// psql's expanded display (`\x`): one block per row, one line per column.
pub fn expanded(result: &QueryResult) -> String {
    let fields = result.schema.fields();
    let rows = cells(result);
    let name_width = fields.iter().map(|f| width(f.name())).max().unwrap_or(0);
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        out.push_str(&format!(
            "-[ RECORD {} ]{}\n",
            n + 1,
            "-".repeat(name_width.saturating_sub(8).max(1))
        ));
        for (field, cell) in fields.iter().zip(row) {
            out.push_str(&format!("{:<name_width$} | {cell}\n", field.name()));
        }
    }
    if rows.is_empty() {
        out.push_str("(0 rows)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn aligned_like_psql() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 100])),
                Arc::new(StringArray::from(vec![Some("alice"), None])),
            ],
        )
        .expect("batch");
        let result = QueryResult {
            schema,
            batches: vec![batch],
        };
        assert_eq!(
            aligned_table(&result),
            " id  | name\n-----+-------\n   1 | alice\n 100 |\n(2 rows)\n"
        );
        assert_eq!(
            expanded(&result),
            "-[ RECORD 1 ]-\nid   | 1\nname | alice\n-[ RECORD 2 ]-\nid   | 100\nname | \n"
        );
    }
}
