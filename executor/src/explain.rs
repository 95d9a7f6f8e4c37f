//! `EXPLAIN CALL name(args)`: a call's statements with the keys each reads and writes; and
//! `EXPLAIN BLOCK n`: the stages R2 ran block `n`'s transactions in.

use std::sync::Arc;

use chainql::contract::call_target;
use datafusion::arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::sql::sqlparser::ast;

use crate::execute::QueryResult;
use crate::keys::{Analyzer, KeySets};
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
    let total = analyzer.call(function);
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
    /// The stages R2 ran block `height` in, as recorded when it executed: per stage, how many
    /// transactions, which (their positions in the block), and how many ran in vectorized
    /// groups (with the contracts they called).
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
                    "SELECT stage, index, vectorized, statements FROM chain.transactions \
                     WHERE block_height = {height} ORDER BY stage, index"
                ),
            )
            .await?;
        struct Stage {
            number: i32,
            positions: Vec<String>,
            vectorized: usize,
            contracts: Vec<String>,
        }
        let mut cut: Vec<Stage> = Vec::new();
        for batch in &answer.batches {
            for row in 0..batch.num_rows() {
                let number: i32 = array_value_to_string(batch.column(0), row)?
                    .parse()
                    .map_err(|_| Error::Internal("a stage is not a number".into()))?;
                let position = array_value_to_string(batch.column(1), row)?;
                let vectorized = array_value_to_string(batch.column(2), row)? == "true";
                if cut.last().is_none_or(|s| s.number != number) {
                    cut.push(Stage {
                        number,
                        positions: Vec::new(),
                        vectorized: 0,
                        contracts: Vec::new(),
                    });
                }
                let stage = cut.last_mut().expect("a stage was just pushed");
                stage.positions.push(position);
                if vectorized {
                    stage.vectorized += 1;
                    let statements = array_value_to_string(batch.column(3), row)?;
                    if let Ok(chainql::contract::ChainStatement::Sql(statement)) =
                        chainql::contract::parse_chain_statement(&statements)
                        && let ast::Statement::Call(function) = *statement
                        && let Ok(name) = call_target(&function.name)
                        && !stage.contracts.contains(&name)
                    {
                        stage.contracts.push(name);
                    }
                }
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("stage", DataType::Int32, false),
            Field::new("transactions", DataType::Int32, false),
            Field::new("vectorized", DataType::Int32, false),
            Field::new("contracts", DataType::Utf8, false),
            Field::new("positions", DataType::Utf8, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from_iter_values(cut.iter().map(|s| s.number))),
            Arc::new(Int32Array::from_iter_values(
                cut.iter().map(|s| s.positions.len() as i32),
            )),
            Arc::new(Int32Array::from_iter_values(
                cut.iter().map(|s| s.vectorized as i32),
            )),
            Arc::new(StringArray::from_iter_values(
                cut.iter().map(|s| s.contracts.join(", ")),
            )),
            Arc::new(StringArray::from_iter_values(
                cut.iter().map(|s| s.positions.join(", ")),
            )),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        Ok(QueryResult {
            schema,
            batches: vec![batch],
        })
    }
}
