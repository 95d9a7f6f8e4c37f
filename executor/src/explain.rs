//! `EXPLAIN CALL name(args)`: a call's statements with the keys each reads and writes; and
//! `EXPLAIN BLOCK n`: the conflict stages of block `n`'s transactions.

use std::sync::Arc;

use chainql::Address;
use chainql::contract::call_target;
use datafusion::arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::sql::sqlparser::ast;

use crate::execute::QueryResult;
use crate::keys::{Analyzer, KeySets, stages};
use crate::state::State;
use crate::{Error, Executor, Result};

/// The height of `EXPLAIN BLOCK n`, when `sql` is one.
pub(crate) fn explain_block_height(sql: &str) -> Result<Option<u64>> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    match words.as_slice() {
        [explain, block, height] if explain == "explain" && block == "block" => height
            .parse()
            .map(Some)
            .map_err(|_| Error::Invalid(format!("EXPLAIN BLOCK takes a block height, not {height}"))),
        _ => Ok(None),
    }
}

fn text_columns(names: &[&str], rows: Vec<Vec<String>>) -> Result<QueryResult> {
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let columns: Vec<ArrayRef> = (0..names.len())
        .map(|c| Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r[c].as_str()))) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    Ok(QueryResult {
        schema,
        batches: vec![batch],
    })
}

/// One row per body statement: what it reads and writes with these arguments (`CALLER()` left
/// symbolic), then the call's total.
pub(crate) fn explain_call(state: &State, function: &ast::Function) -> Result<QueryResult> {
    let name = call_target(&function.name)?;
    let contract = state
        .contract(&name)
        .ok_or_else(|| Error::UndefinedContract(name.clone()))?;
    let analyzer = Analyzer::new(state, None);
    let total = analyzer.call(function, &[], 0);
    let values: Vec<_> = match &function.args {
        ast::FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|a| match a {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => analyzer.literal(e),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut rows = Vec::new();
    for (i, (statement, sets)) in analyzer
        .contract_steps(&contract.definition, &values, 0)
        .into_iter()
        .enumerate()
    {
        rows.push(step_row(&(i + 1).to_string(), &statement, &sets));
    }
    rows.push(step_row("total", &contract.definition.signature(), &total));
    text_columns(&["step", "statement", "reads", "writes"], rows)
}

fn step_row(step: &str, statement: &str, sets: &KeySets) -> Vec<String> {
    match &sets.barrier {
        Some(reason) => vec![
            step.to_string(),
            statement.to_string(),
            format!("everything ({reason})"),
            format!("everything ({reason})"),
        ],
        None => vec![
            step.to_string(),
            statement.to_string(),
            sets.reads_text(),
            sets.writes_text(),
        ],
    }
}

impl Executor {
    /// The stages block `height`'s transactions fall into by their key sets (worked out against
    /// the tables and contracts of `state`).
    pub(crate) async fn explain_block(&self, state: &State, height: u64) -> Result<QueryResult> {
        if height == 0 || height > state.height() {
            return Err(Error::Invalid(format!(
                "block {height} is not committed (the chain is at {})",
                state.height()
            )));
        }
        let answer = self
            .read(
                state,
                &format!(
                    "SELECT sender, statements FROM chain.transactions WHERE block_height = {height} ORDER BY index"
                ),
            )
            .await?;
        let mut sets = Vec::new();
        for batch in &answer.batches {
            for row in 0..batch.num_rows() {
                let sender = array_value_to_string(batch.column(0), row)?;
                let text = array_value_to_string(batch.column(1), row)?;
                let split = chainql::sql::split_statements(&text);
                let mut statements: Vec<String> = split.statements.iter().map(|s| s.to_string()).collect();
                if split.has_unfinished_statement() {
                    statements.push(split.remainder.trim().to_string());
                }
                let caller = Address::from_hex(&sender).ok();
                sets.push(Analyzer::new(state, caller).transaction(&statements));
            }
        }
        let cut = stages(&sets);
        let schema = Arc::new(Schema::new(vec![
            Field::new("stage", DataType::Int32, false),
            Field::new("transactions", DataType::Int32, false),
            Field::new("positions", DataType::Utf8, false),
        ]));
        let positions: Vec<String> = cut
            .iter()
            .map(|s| s.iter().map(usize::to_string).collect::<Vec<_>>().join(", "))
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from_iter_values((1..=cut.len()).map(|s| s as i32))),
            Arc::new(Int32Array::from_iter_values(cut.iter().map(|s| s.len() as i32))),
            Arc::new(StringArray::from(positions)),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        Ok(QueryResult {
            schema,
            batches: vec![batch],
        })
    }
}
