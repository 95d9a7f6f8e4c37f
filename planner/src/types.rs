//! SQL column types and the Arrow types that store them.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, CharacterLength, ExactNumberInfo, TimezoneInfo};

use crate::{Error, Result};

/// Largest declared length of a `VARCHAR(n)`/`CHAR(n)` column.
const CHAR_LENGTH_MAX: u64 = 10 << 20;

/// A column's type: how it is stored, how it is shown, and any length bound.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnType {
    pub data_type: DataType,
    /// The most characters a value may have (`VARCHAR(n)`, `CHAR(n)`).
    pub max_chars: Option<u32>,
}

impl ColumnType {
    fn of(data_type: DataType) -> ColumnType {
        ColumnType {
            data_type,
            max_chars: None,
        }
    }

    /// The PostgreSQL-style name of the type, as `\d` shows it.
    pub fn sql_name(&self) -> String {
        let base = sql_type_name(&self.data_type);
        match self.max_chars {
            Some(n) => format!("varchar({n})"),
            None => base,
        }
    }
}

/// The PostgreSQL-style name of an Arrow type.
pub fn sql_type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "bigint".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("numeric({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time".into(),
        DataType::Interval(_) => "interval".into(),
        DataType::Null => "null".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// Maps a declared SQL type to its storage type; refuses types ChainQL does not store.
pub fn column_type(declared: &ast::DataType) -> Result<ColumnType> {
    use ast::DataType as T;
    let unsupported = || Err(Error::Unsupported(format!("column type {declared}")));
    Ok(match declared {
        T::Bool | T::Boolean => ColumnType::of(DataType::Boolean),
        T::TinyInt(_) | T::Int2(_) | T::SmallInt(_) | T::Int16 => ColumnType::of(DataType::Int16),
        T::Int(_) | T::Int4(_) | T::Integer(_) | T::Int32 => ColumnType::of(DataType::Int32),
        T::Int8(_) | T::BigInt(_) | T::Int64 => ColumnType::of(DataType::Int64),
        T::Real | T::Float4 | T::Float32 => ColumnType::of(DataType::Float32),
        T::Float8 | T::Float64 | T::DoublePrecision | T::Double(ExactNumberInfo::None) => {
            ColumnType::of(DataType::Float64)
        }
        T::Float(info) => match info {
            ExactNumberInfo::Precision(p) if *p <= 24 => ColumnType::of(DataType::Float32),
            _ => ColumnType::of(DataType::Float64),
        },
        T::Numeric(info) | T::Decimal(info) => {
            let (precision, scale) = match info {
                ExactNumberInfo::None => (38, 10),
                ExactNumberInfo::Precision(p) => (*p, 0),
                ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
            };
            if !(1..=38).contains(&precision) || scale < 0 || scale > precision as i64 {
                return Err(Error::Unsupported(format!(
                    "{declared}: precision must be 1 to 38 and scale 0 to the precision"
                )));
            }
            ColumnType::of(DataType::Decimal128(precision as u8, scale as i8))
        }
        T::Text | T::String(None) => ColumnType::of(DataType::Utf8),
        T::Varchar(length) | T::CharacterVarying(length) | T::Char(length) | T::Character(length) => {
            match length {
                None | Some(CharacterLength::Max) => ColumnType::of(DataType::Utf8),
                Some(CharacterLength::IntegerLength { length, .. }) => {
                    if *length == 0 || *length > CHAR_LENGTH_MAX {
                        return Err(Error::Unsupported(format!(
                            "{declared}: length must be 1 to {CHAR_LENGTH_MAX}"
                        )));
                    }
                    ColumnType {
                        data_type: DataType::Utf8,
                        max_chars: Some(*length as u32),
                    }
                }
            }
        }
        T::Bytea | T::Blob(None) | T::Bytes(None) | T::Varbinary(None) | T::Binary(None) => {
            ColumnType::of(DataType::Binary)
        }
        T::Date => ColumnType::of(DataType::Date32),
        T::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) | T::Datetime(_) => {
            ColumnType::of(DataType::Timestamp(TimeUnit::Microsecond, None))
        }
        T::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => {
            ColumnType::of(DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())))
        }
        _ => return unsupported(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn parse_type(sql: &str) -> ast::DataType {
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_data_type())
            .expect("a type")
    }

    #[test]
    fn maps_the_usual_types() {
        let cases = [
            ("BIGINT", DataType::Int64, "bigint"),
            ("int", DataType::Int32, "integer"),
            ("SMALLINT", DataType::Int16, "smallint"),
            ("TEXT", DataType::Utf8, "text"),
            ("DOUBLE PRECISION", DataType::Float64, "double precision"),
            ("NUMERIC(10,2)", DataType::Decimal128(10, 2), "numeric(10,2)"),
            ("BOOLEAN", DataType::Boolean, "boolean"),
            ("BYTEA", DataType::Binary, "bytea"),
            ("DATE", DataType::Date32, "date"),
        ];
        for (sql, data_type, name) in cases {
            let mapped = column_type(&parse_type(sql)).expect(sql);
            assert_eq!(mapped.data_type, data_type, "{sql}");
            assert_eq!(mapped.sql_name(), name, "{sql}");
        }
        let varchar = column_type(&parse_type("VARCHAR(12)")).expect("varchar");
        assert_eq!(varchar.max_chars, Some(12));
        assert_eq!(varchar.sql_name(), "varchar(12)");
        assert!(column_type(&parse_type("NUMERIC(50,2)")).is_err());
        assert!(column_type(&parse_type("JSONB")).is_err());
    }
}
