//! SQLSTATE codes of DataFusion's errors, which reach every layer above the planner. The codes
//! themselves are in [`chainql::sqlstate`], re-exported here.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;

pub use chainql::sqlstate::*;

/// The SQLSTATE of a DataFusion error: its root cause, through contexts and wrappers.
pub fn of_datafusion(error: &DataFusionError) -> &'static str {
    match error {
        DataFusionError::Context(_, inner) => of_datafusion(inner),
        DataFusionError::Diagnostic(_, inner) => of_datafusion(inner),
        DataFusionError::Shared(inner) => of_datafusion(inner),
        DataFusionError::Collection(errors) => errors.first().map_or(INTERNAL_ERROR, of_datafusion),
        DataFusionError::SQL(error, _) => match error.as_ref() {
            ParserError::RecursionLimitExceeded => PROGRAM_LIMIT_EXCEEDED,
            _ => SYNTAX_ERROR,
        },
        DataFusionError::SchemaError(error, _) => {
            use datafusion::common::SchemaError;
            match error.as_ref() {
                SchemaError::FieldNotFound { .. } => UNDEFINED_COLUMN,
                SchemaError::AmbiguousReference { .. } => AMBIGUOUS_COLUMN,
                _ => SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION,
            }
        }
        DataFusionError::Plan(message) => of_plan_message(message),
        DataFusionError::NotImplemented(_) => FEATURE_NOT_SUPPORTED,
        DataFusionError::ArrowError(error, _) => of_arrow(error),
        DataFusionError::Execution(message) if message.contains("ivide by zero") => DIVISION_BY_ZERO,
        DataFusionError::Execution(_) => DATA_EXCEPTION,
        DataFusionError::ResourcesExhausted(_) => PROGRAM_LIMIT_EXCEEDED,
        _ => INTERNAL_ERROR,
    }
}

fn of_plan_message(message: &str) -> &'static str {
    if message.starts_with("table '") && message.ends_with("not found") {
        UNDEFINED_TABLE
    } else if message.contains("Invalid function") || message.contains("No function matches") {
        UNDEFINED_FUNCTION
    } else if message.contains("Cannot infer common argument type")
        || message.contains("Cannot coerce")
        || message.contains("coercion")
    {
        DATATYPE_MISMATCH
    } else {
        SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION
    }
}

/// The SQLSTATE of an Arrow error met while evaluating an expression.
pub fn of_arrow(error: &ArrowError) -> &'static str {
    match error {
        ArrowError::DivideByZero => DIVISION_BY_ZERO,
        ArrowError::ArithmeticOverflow(_) => NUMERIC_VALUE_OUT_OF_RANGE,
        ArrowError::CastError(_) | ArrowError::ParseError(_) => INVALID_TEXT_REPRESENTATION,
        ArrowError::ComputeError(message) if message.contains("overflow") => NUMERIC_VALUE_OUT_OF_RANGE,
        _ => DATA_EXCEPTION,
    }
}

impl crate::Error {
    /// The SQLSTATE a PostgreSQL client sees for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            crate::Error::Unsupported(_) => FEATURE_NOT_SUPPORTED,
            crate::Error::Invalid(_) => SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION,
            crate::Error::UndefinedTable(_) => UNDEFINED_TABLE,
            crate::Error::UndefinedColumn { .. } => UNDEFINED_COLUMN,
            crate::Error::ReadOnly(_) => READ_ONLY_SQL_TRANSACTION,
            crate::Error::DataFusion(error) => of_datafusion(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn code_of(sql: &str) -> &'static str {
        let context = SessionContext::new();
        match context.sql(sql).await {
            Ok(frame) => match frame.collect().await {
                Ok(_) => SUCCESSFUL_COMPLETION,
                Err(error) => of_datafusion(&error),
            },
            Err(error) => of_datafusion(&error),
        }
    }

    #[tokio::test]
    async fn datafusion_errors_get_postgres_codes() {
        assert_eq!(code_of("SELEC 1").await, SYNTAX_ERROR);
        assert_eq!(code_of("SELECT * FROM missing").await, UNDEFINED_TABLE);
        assert_eq!(
            code_of("SELECT nope FROM (VALUES (1)) AS t(a)").await,
            UNDEFINED_COLUMN
        );
        assert_eq!(code_of("SELECT no_such_function(1)").await, UNDEFINED_FUNCTION);
        assert_eq!(code_of("SELECT 1").await, SUCCESSFUL_COMPLETION);
    }
}
