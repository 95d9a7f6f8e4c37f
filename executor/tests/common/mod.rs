//! Helpers the executor's test files share.

use chainql_executor::{Executor, State};

/// Every row of a query's answer as text (cells joined by `|`), in the order it came.
pub async fn rows(executor: &Executor, state: &State, sql: &str) -> Vec<String> {
    let answer = executor
        .query(state, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = Vec::new();
    for batch in &answer.batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| datafusion::arrow::util::display::array_value_to_string(c, row).expect("display"))
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}
