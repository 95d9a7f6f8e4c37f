//! Binding a prepared statement's parameters. A ChainQL write travels as signed SQL text, so a
//! bound statement is rendered back to SQL with each `$n` replaced by its value as a literal:
//! the transaction a client signs says exactly what it does. Queries are bound the same way.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};
use datafusion::sql::sqlparser::ast::{Expr, Statement, Value, visit_expressions_mut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use pgwire::api::Type;
use pgwire::api::portal::Portal;
use pgwire::error::PgWireResult;
use rust_decimal::Decimal;

use super::user_error;
use chainql::sqlstate;

/// Reads parameter `index` of `portal` as a SQL literal of PostgreSQL type `pg`.
pub fn literal<S: Clone>(portal: &Portal<S>, index: usize, pg: &Type) -> PgWireResult<Expr> {
    macro_rules! read {
        ($t:ty) => {
            match portal.parameter::<$t>(index, pg)? {
                Some(value) => value,
                None => return Ok(null()),
            }
        };
    }
    Ok(match *pg {
        Type::BOOL => Expr::value(Value::Boolean(read!(bool))),
        Type::INT2 => number(read!(i16)),
        Type::INT4 => number(read!(i32)),
        Type::INT8 => number(read!(i64)),
        Type::FLOAT4 => float(read!(f32) as f64, "REAL"),
        Type::FLOAT8 => float(read!(f64), "DOUBLE PRECISION"),
        Type::NUMERIC => cast(&read!(Decimal).to_string(), "NUMERIC")?,
        Type::BYTEA => Expr::value(Value::HexStringLiteral(hex::encode(read!(Vec<u8>)))),
        Type::DATE => cast(&read!(NaiveDate).to_string(), "DATE")?,
        Type::TIME => cast(&read!(NaiveTime).to_string(), "TIME")?,
        Type::TIMESTAMP => cast(&read!(NaiveDateTime).to_string(), "TIMESTAMP")?,
        Type::TIMESTAMPTZ => cast(
            &read!(DateTime<FixedOffset>).to_rfc3339(),
            "TIMESTAMP WITH TIME ZONE",
        )?,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            Expr::value(Value::SingleQuotedString(read!(String)))
        }
        _ => {
            return Err(user_error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("parameters of type {pg} are not supported; send it as text"),
            ));
        }
    })
}

fn null() -> Expr {
    Expr::value(Value::Null)
}

fn number(value: impl ToString) -> Expr {
    Expr::value(Value::Number(value.to_string(), false))
}

fn float(value: f64, sql_type: &str) -> Expr {
    if value.is_finite() {
        // `{:?}` keeps a decimal point or an exponent, so the literal stays a float.
        Expr::value(Value::Number(format!("{value:?}"), false))
    } else {
        let text = if value.is_nan() {
            "NaN"
        } else if value > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        };
        cast(text, sql_type).unwrap_or_else(|_| null())
    }
}

/// `CAST('text' AS sql_type)`.
fn cast(text: &str, sql_type: &str) -> PgWireResult<Expr> {
    let sql = format!("CAST('{}' AS {sql_type})", text.replace('\'', "''"));
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .and_then(|mut parser| parser.parse_expr())
        .map_err(|e| user_error(sqlstate::INVALID_TEXT_REPRESENTATION, e.to_string()))
}

/// Replaces every `$n` in `statement` with `values[n - 1]`.
pub fn substitute(statement: &mut Statement, values: &[Expr]) -> PgWireResult<()> {
    let mut missing = None;
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Value(value) = expr
            && let Value::Placeholder(name) = &value.value
        {
            let index = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| n.checked_sub(1));
            match index.and_then(|i| values.get(i)) {
                Some(literal) => *expr = literal.clone(),
                None => {
                    missing = Some(name.clone());
                    return std::ops::ControlFlow::Break(());
                }
            }
        }
        std::ops::ControlFlow::Continue(())
    });
    match missing {
        Some(name) => Err(user_error(
            sqlstate::UNDEFINED_PARAMETER,
            format!("there is no parameter {name}"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .expect("parses")
            .remove(0)
    }

    #[test]
    fn placeholders_become_literals() {
        let mut statement = parse("UPDATE t SET v = $2 WHERE id = $1 AND note = $3");
        let values = [
            number(-7i64),
            Expr::value(Value::SingleQuotedString("it's".into())),
            null(),
        ];
        substitute(&mut statement, &values).expect("binds");
        assert_eq!(
            statement.to_string(),
            "UPDATE t SET v = 'it''s' WHERE id = -7 AND note = NULL"
        );
    }

    #[test]
    fn a_missing_parameter_is_an_error() {
        let mut statement = parse("SELECT $1, $2");
        assert!(substitute(&mut statement, &[number(1)]).is_err());
    }

    #[test]
    fn floats_stay_floats_and_specials_are_cast() {
        assert_eq!(float(1.0, "DOUBLE PRECISION").to_string(), "1.0");
        assert_eq!(float(1e-7, "DOUBLE PRECISION").to_string(), "1e-7");
        assert_eq!(
            float(f64::NAN, "DOUBLE PRECISION").to_string(),
            "CAST('NaN' AS DOUBLE PRECISION)"
        );
    }
}
