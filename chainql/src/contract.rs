//! ChainQL contracts: named, typed procedures whose body is SQL.
//!
//! ```sql
//! CREATE CONTRACT transfer(to_addr TEXT, amount BIGINT) AS $$
//!   REQUIRE amount > 0, 'amount must be positive';
//!   LET balance = (SELECT balance FROM tokens WHERE owner = CALLER());
//!   REQUIRE balance >= amount, 'insufficient balance';
//!   UPDATE tokens SET balance = balance - amount WHERE owner = CALLER();
//!   INSERT INTO tokens VALUES (to_addr, amount)
//!     ON CONFLICT (owner) DO UPDATE SET balance = tokens.balance + excluded.balance;
//!   EMIT transferred(CALLER(), to_addr, amount);
//! $$;
//! CALL transfer('0x…', 10);
//! ```
//!
//! The full grammar:
//!
//! ```text
//! CREATE CONTRACT name ( [ parameter type [, ...] ] )
//!     [ RETURNS TABLE ( column type [, ...] ) ]
//!     [ PUBLIC | OWNER ] [ VIEW ]
//!     AS $$ statement; ... $$
//! DROP CONTRACT [ IF EXISTS ] name
//! CALL name ( [ expression [, ...] ] )
//! ```
//!
//! Body statements: `REQUIRE condition, 'message'`, `LET name = expression`,
//! `EMIT event(expression, ...)`, `CALL other(expression, ...)`, `INSERT`/`UPDATE`/`DELETE`, and a
//! final `SELECT` when the contract `RETURNS TABLE`. Inside the body, an unqualified name that is
//! a parameter or a `LET` value means that value (it shadows a column of the same name; qualify
//! the column, `t.name`, to reach it).

use std::ops::ControlFlow;

use sqlparser::ast::{DataType, Expr, Ident, ObjectName, Statement, Value, VisitMut, VisitorMut};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::sql::{StatementKind, check_deterministic, classify, split_statements};
use crate::{Error, Result};

/// Statements in one contract body, at most.
pub const CONTRACT_STATEMENTS_MAX: usize = 256;
/// Parameters of one contract, at most.
pub const CONTRACT_PARAMETERS_MAX: usize = 64;

/// Who may call a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Anyone.
    Public,
    /// Only the account that deployed it.
    Owner,
}

/// One statement of a contract body.
#[derive(Debug, Clone, PartialEq)]
pub enum ContractStatement {
    /// The call fails with `message` unless `condition` is true.
    Require { condition: Expr, message: String },
    /// Binds `name` to the value of `value` for the statements after it.
    Let { name: String, value: Expr },
    /// Records an event `name(args...)` in the transaction's receipt and `chain.events`.
    Emit { event: String, args: Vec<Expr> },
    /// Calls another contract.
    Call { contract: String, args: Vec<Expr> },
    /// `INSERT`, `UPDATE`, `DELETE`, or the final `SELECT`.
    Sql(Box<Statement>),
}

/// A parsed `CREATE CONTRACT`.
#[derive(Debug, Clone, PartialEq)]
pub struct ContractDefinition {
    pub name: String,
    pub parameters: Vec<(String, DataType)>,
    /// The result columns, for a contract that `RETURNS TABLE`.
    pub returns: Option<Vec<(String, DataType)>>,
    pub access: Access,
    /// A `VIEW` contract only reads: it is answered as a query, with no transaction.
    pub view: bool,
    pub statements: Vec<ContractStatement>,
    /// The whole `CREATE CONTRACT` text, as deployed.
    pub source: String,
}

impl ContractDefinition {
    /// The body with every parameter and `LET` name rewritten to its placeholder (`bind_names`):
    /// each statement sees the parameters and the `LET`s before it, a `LET`'s own value the
    /// names before that `LET`.
    pub fn bound_statements(&self) -> Vec<ContractStatement> {
        let mut names: Vec<String> = self.parameters.iter().map(|(n, _)| n.clone()).collect();
        self.statements
            .iter()
            .map(|statement| {
                let mut statement = statement.clone();
                match &mut statement {
                    ContractStatement::Require { condition, .. } => bind_names(condition, &names),
                    ContractStatement::Let { name, value } => {
                        bind_names(value, &names);
                        names.push(name.clone());
                    }
                    ContractStatement::Emit { args, .. } | ContractStatement::Call { args, .. } => {
                        for arg in args {
                            bind_names(arg, &names);
                        }
                    }
                    ContractStatement::Sql(statement) => bind_names(statement.as_mut(), &names),
                }
                statement
            })
            .collect()
    }

    /// `name(a BIGINT, b TEXT)`, as `\dC` shows it.
    pub fn signature(&self) -> String {
        let parameters: Vec<String> = self.parameters.iter().map(|(n, t)| format!("{n} {t}")).collect();
        format!("{}({})", self.name, parameters.join(", "))
    }

    /// Positions of the names a body statement may use as values: the parameters, then the `LET`
    /// names, in order. A later `LET` of a name shadows the earlier one.
    pub fn binding_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.parameters.iter().map(|(n, _)| n.clone()).collect();
        for statement in &self.statements {
            if let ContractStatement::Let { name, .. } = statement {
                names.push(name.clone());
            }
        }
        names
    }
}

/// A statement of a transaction, in ChainQL's dialect.
#[derive(Debug, Clone, PartialEq)]
pub enum ChainStatement {
    /// Plain SQL.
    Sql(Box<Statement>),
    CreateContract(Box<ContractDefinition>),
    DropContract {
        name: String,
        if_exists: bool,
    },
    /// `STAKE n`: bonds `n` of the sender's native balance as validator stake, with the
    /// sender's key as the validator's key. It joins the voting power at the next epoch boundary.
    Stake(u64),
    /// `UNSTAKE n`: withdraws `n` of the sender's stake: stake not yet bonded returns at once,
    /// bonded stake leaves the voting power at the next epoch boundary and returns to the
    /// balance one epoch later.
    Unstake(u64),
}

impl ChainStatement {
    pub fn kind(&self) -> StatementKind {
        match self {
            ChainStatement::Sql(statement) => classify(statement),
            ChainStatement::CreateContract(_) => StatementKind::CreateContract,
            ChainStatement::DropContract { .. } => StatementKind::DropContract,
            ChainStatement::Stake(_) => StatementKind::Stake,
            ChainStatement::Unstake(_) => StatementKind::Unstake,
        }
    }
}

fn normalize(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn parser(sql: &str) -> Result<Parser<'static>> {
    Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(crate::sql::PARSE_DEPTH_MAX)
        .try_with_sql(sql)
        .map_err(|e| Error::Sql(e.to_string()))
}

/// An error's message without the `SQL error:` prefix, for nesting in another message.
fn bare(error: Error) -> String {
    match error {
        Error::Sql(message) => message,
        other => other.to_string(),
    }
}

fn sql_error(error: sqlparser::parser::ParserError) -> Error {
    Error::Sql(error.to_string())
}

fn is_word(token: &Token, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.value.eq_ignore_ascii_case(word))
}

/// Parses a ChainQL statement: a contract definition or drop, or plain SQL.
pub fn parse_chain_statement(sql: &str) -> Result<ChainStatement> {
    // Most transactions are `CALL name(literals)`: read without tokenizing the whole text.
    if let Some(call) = crate::sql::parse_literal_call(sql) {
        return Ok(ChainStatement::Sql(Box::new(call)));
    }
    let mut p = parser(sql)?;
    let first = p.peek_token().token;
    let second = p.peek_nth_token(1).token;
    if is_word(&first, "create") && is_word(&second, "contract") {
        return parse_create_contract(sql).map(|c| ChainStatement::CreateContract(Box::new(c)));
    }
    if is_word(&first, "drop") && is_word(&second, "contract") {
        p.next_token();
        p.next_token();
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = p.parse_identifier().map_err(sql_error)?;
        let _ = p.consume_token(&Token::SemiColon);
        if p.peek_token().token != Token::EOF {
            return Err(Error::Sql(format!(
                "unexpected {} after DROP CONTRACT",
                p.peek_token().token
            )));
        }
        return Ok(ChainStatement::DropContract {
            name: normalize(&name),
            if_exists,
        });
    }
    if is_word(&first, "stake") || is_word(&first, "unstake") {
        return parse_staking(&mut p);
    }
    // Plain SQL: the tokens already read serve the statement parser too.
    let mut statements = p.parse_statements().map_err(sql_error)?;
    match statements.len() {
        1 => Ok(ChainStatement::Sql(Box::new(statements.remove(0)))),
        0 => Err(Error::Sql("empty statement".into())),
        n => Err(Error::Sql(format!("expected one statement, found {n}"))),
    }
}

/// `STAKE n` or `UNSTAKE n`, `n` a positive integer literal.
fn parse_staking(p: &mut Parser<'_>) -> Result<ChainStatement> {
    let verb = p.next_token().token;
    let stake = is_word(&verb, "stake");
    let name = if stake { "STAKE" } else { "UNSTAKE" };
    let amount = match p.next_token().token {
        Token::Number(digits, false) => digits.parse::<u64>().ok().filter(|n| *n > 0),
        _ => None,
    };
    let Some(amount) = amount else {
        return Err(Error::Sql(format!(
            "{name} takes a positive whole amount of native units, as in {name} 100"
        )));
    };
    let _ = p.consume_token(&Token::SemiColon);
    if p.peek_token().token != Token::EOF {
        return Err(Error::Sql(format!(
            "unexpected {} after {name} {amount}",
            p.peek_token().token
        )));
    }
    Ok(if stake {
        ChainStatement::Stake(amount)
    } else {
        ChainStatement::Unstake(amount)
    })
}

fn parse_name_types(p: &mut Parser<'_>) -> Result<Vec<(String, DataType)>> {
    p.expect_token(&Token::LParen).map_err(sql_error)?;
    if p.consume_token(&Token::RParen) {
        return Ok(Vec::new());
    }
    let pairs = p
        .parse_comma_separated(|p| Ok((p.parse_identifier()?, p.parse_data_type()?)))
        .map_err(sql_error)?;
    p.expect_token(&Token::RParen).map_err(sql_error)?;
    let mut out: Vec<(String, DataType)> = Vec::with_capacity(pairs.len());
    for (name, data_type) in pairs {
        let name = normalize(&name);
        if out.iter().any(|(n, _)| *n == name) {
            return Err(Error::Sql(format!("{name:?} is declared more than once")));
        }
        out.push((name, data_type));
    }
    Ok(out)
}

/// Parses `CREATE CONTRACT ...`.
pub fn parse_create_contract(sql: &str) -> Result<ContractDefinition> {
    let mut p = parser(sql)?;
    p.expect_keyword(Keyword::CREATE).map_err(sql_error)?;
    if !is_word(&p.next_token().token, "contract") {
        return Err(Error::Sql("expected CREATE CONTRACT".into()));
    }
    let name = normalize(&p.parse_identifier().map_err(sql_error)?);
    if name.starts_with("__chainql") {
        return Err(Error::Sql(format!("contract name {name:?} is reserved")));
    }
    let parameters = parse_name_types(&mut p)?;
    if parameters.len() > CONTRACT_PARAMETERS_MAX {
        return Err(Error::Sql(format!(
            "a contract takes at most {CONTRACT_PARAMETERS_MAX} parameters"
        )));
    }
    let mut returns = None;
    let mut access = None;
    let mut view = false;
    loop {
        let token = p.peek_token().token;
        if is_word(&token, "returns") {
            p.next_token();
            p.expect_keyword(Keyword::TABLE).map_err(sql_error)?;
            returns = Some(parse_name_types(&mut p)?);
        } else if is_word(&token, "public") || is_word(&token, "owner") {
            p.next_token();
            if access.is_some() {
                return Err(Error::Sql("PUBLIC and OWNER exclude each other".into()));
            }
            access = Some(if is_word(&token, "public") {
                Access::Public
            } else {
                Access::Owner
            });
        } else if is_word(&token, "view") {
            p.next_token();
            view = true;
        } else {
            break;
        }
    }
    p.expect_keyword(Keyword::AS).map_err(sql_error)?;
    let body = match p.next_token().token {
        Token::DollarQuotedString(s) => s.value,
        Token::SingleQuotedString(s) => s,
        other => {
            return Err(Error::Sql(format!(
                "expected the contract body as $$ ... $$, found {other}"
            )));
        }
    };
    let _ = p.consume_token(&Token::SemiColon);
    if p.peek_token().token != Token::EOF {
        return Err(Error::Sql(format!(
            "unexpected {} after the contract body",
            p.peek_token().token
        )));
    }
    let split = split_statements(&body);
    let mut texts: Vec<&str> = split.statements.clone();
    if split.has_unfinished_statement() {
        texts.push(split.remainder.trim());
    }
    if texts.is_empty() {
        return Err(Error::Sql(format!("contract {name} has an empty body")));
    }
    if texts.len() > CONTRACT_STATEMENTS_MAX {
        return Err(Error::Sql(format!(
            "a contract body holds at most {CONTRACT_STATEMENTS_MAX} statements"
        )));
    }
    let mut statements = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let statement = parse_body_statement(text)
            .map_err(|e| Error::Sql(format!("contract {name}, statement {}: {}", i + 1, bare(e))))?;
        statements.push(statement);
    }
    let definition = ContractDefinition {
        name,
        parameters,
        returns,
        access: access.unwrap_or(Access::Public),
        view,
        statements,
        source: sql.trim().trim_end_matches(';').trim().to_string(),
    };
    check_body(&definition)?;
    Ok(definition)
}

fn parse_call_args(p: &mut Parser<'_>) -> Result<Vec<Expr>> {
    p.expect_token(&Token::LParen).map_err(sql_error)?;
    if p.consume_token(&Token::RParen) {
        return Ok(Vec::new());
    }
    let args = p.parse_comma_separated(Parser::parse_expr).map_err(sql_error)?;
    p.expect_token(&Token::RParen).map_err(sql_error)?;
    Ok(args)
}

fn expect_end(p: &mut Parser<'_>) -> Result<()> {
    match p.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(Error::Sql(format!("unexpected {other}"))),
    }
}

/// Parses one statement of a contract body.
pub fn parse_body_statement(text: &str) -> Result<ContractStatement> {
    let mut p = parser(text)?;
    let first = p.peek_token().token;
    if is_word(&first, "require") {
        p.next_token();
        let condition = p.parse_expr().map_err(sql_error)?;
        p.expect_token(&Token::Comma).map_err(sql_error)?;
        let message = match p.next_token().token {
            Token::SingleQuotedString(s) => s,
            Token::DollarQuotedString(s) => s.value,
            other => {
                return Err(Error::Sql(format!(
                    "REQUIRE needs a message string, found {other}"
                )));
            }
        };
        expect_end(&mut p)?;
        return Ok(ContractStatement::Require { condition, message });
    }
    if is_word(&first, "let") {
        p.next_token();
        let name = normalize(&p.parse_identifier().map_err(sql_error)?);
        p.expect_token(&Token::Eq).map_err(sql_error)?;
        let value = p.parse_expr().map_err(sql_error)?;
        expect_end(&mut p)?;
        return Ok(ContractStatement::Let { name, value });
    }
    if is_word(&first, "emit") {
        p.next_token();
        let event = normalize(&p.parse_identifier().map_err(sql_error)?);
        let args = parse_call_args(&mut p)?;
        expect_end(&mut p)?;
        return Ok(ContractStatement::Emit { event, args });
    }
    if is_word(&first, "call") {
        p.next_token();
        let contract = normalize(&p.parse_identifier().map_err(sql_error)?);
        let args = parse_call_args(&mut p)?;
        expect_end(&mut p)?;
        return Ok(ContractStatement::Call { contract, args });
    }
    let statement = crate::sql::parse_statement(text)?;
    match classify(&statement) {
        StatementKind::Insert | StatementKind::Update | StatementKind::Delete | StatementKind::Query => {
            Ok(ContractStatement::Sql(Box::new(statement)))
        }
        _ => Err(Error::Sql(format!(
            "a contract body holds REQUIRE, LET, EMIT, CALL, INSERT, UPDATE, DELETE and a final SELECT; not {}",
            text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
        ))),
    }
}

/// Checks what the grammar alone cannot: determinism, a `SELECT` only last and only with
/// `RETURNS TABLE`, and no writes in a `VIEW`.
fn check_body(definition: &ContractDefinition) -> Result<()> {
    let name = &definition.name;
    let last = definition.statements.len() - 1;
    for (i, statement) in definition.statements.iter().enumerate() {
        let at = |m: String| Error::Sql(format!("contract {name}, statement {}: {m}", i + 1));
        for expr in statement_expressions(statement) {
            check_expression_deterministic(expr).map_err(|e| at(bare(e)))?;
        }
        match statement {
            ContractStatement::Sql(sql) => {
                check_deterministic(sql).map_err(|e| at(bare(e)))?;
                let kind = classify(sql);
                if kind == StatementKind::Query {
                    if i != last {
                        return Err(at("a SELECT may only be the last statement".into()));
                    }
                    if definition.returns.is_none() {
                        return Err(at("a final SELECT needs RETURNS TABLE (...)".into()));
                    }
                } else if definition.view {
                    return Err(at(format!("a VIEW contract cannot {}", kind.command_tag())));
                }
            }
            ContractStatement::Emit { .. } if definition.view => {
                return Err(at("a VIEW contract cannot EMIT".into()));
            }
            ContractStatement::Call { contract, .. } if contract == name => {
                return Err(at("a contract cannot call itself".into()));
            }
            _ => {}
        }
    }
    if definition.returns.is_some()
        && !matches!(definition.statements.last(), Some(ContractStatement::Sql(s)) if classify(s) == StatementKind::Query)
    {
        return Err(Error::Sql(format!(
            "contract {name} RETURNS TABLE but does not end with a SELECT"
        )));
    }
    Ok(())
}

fn statement_expressions(statement: &ContractStatement) -> Vec<&Expr> {
    match statement {
        ContractStatement::Require { condition, .. } => vec![condition],
        ContractStatement::Let { value, .. } => vec![value],
        ContractStatement::Emit { args, .. } | ContractStatement::Call { args, .. } => args.iter().collect(),
        ContractStatement::Sql(_) => Vec::new(),
    }
}

fn check_expression_deterministic(expr: &Expr) -> Result<()> {
    // Wrap the expression in a statement so the shared check walks it.
    let statement = crate::sql::parse_statement(&format!("SELECT {expr}"))?;
    check_deterministic(&statement)
}

/// Replaces every unqualified identifier naming a binding with a placeholder `$n` (its position
/// among `bindings`, counting from 1, the last binding of a name winning).
pub fn bind_names<T: VisitMut>(node: &mut T, bindings: &[String]) {
    struct Binder<'a>(&'a [String]);
    impl VisitorMut for Binder<'_> {
        type Break = ();
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if let Expr::Identifier(ident) = expr {
                let name = normalize(ident);
                if let Some(position) = self.0.iter().rposition(|b| *b == name) {
                    *expr = Expr::Value(Value::Placeholder(format!("${}", position + 1)).into());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = node.visit(&mut Binder(bindings));
}

/// The binding position (from 0) a placeholder `$n` written by [`bind_names`] stands for.
pub fn placeholder_position(id: &str) -> Option<usize> {
    id.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)
}

/// The name of a contract in a `CALL` statement.
pub fn call_target(name: &ObjectName) -> Result<String> {
    match name.0.as_slice() {
        [part] => part
            .as_ident()
            .map(normalize)
            .ok_or_else(|| Error::Sql(format!("contract name {name}"))),
        _ => Err(Error::Sql(format!("contract name {name} must not be qualified"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSFER: &str = "CREATE CONTRACT transfer(to_addr TEXT, amount BIGINT) AS $$
        REQUIRE amount > 0, 'amount must be positive';
        LET have = (SELECT balance FROM tokens WHERE owner = CALLER());
        REQUIRE have >= amount, 'insufficient balance';
        UPDATE tokens SET balance = balance - amount WHERE owner = CALLER();
        INSERT INTO tokens VALUES (to_addr, amount)
          ON CONFLICT (owner) DO UPDATE SET balance = tokens.balance + excluded.balance;
        EMIT transferred(CALLER(), to_addr, amount);
      $$;";

    #[test]
    fn parses_a_contract() {
        let ChainStatement::CreateContract(definition) = parse_chain_statement(TRANSFER).expect("parses")
        else {
            panic!("not a contract");
        };
        assert_eq!(definition.name, "transfer");
        assert_eq!(definition.signature(), "transfer(to_addr TEXT, amount BIGINT)");
        assert_eq!(definition.access, Access::Public);
        assert!(!definition.view);
        assert_eq!(definition.statements.len(), 6);
        assert!(matches!(&definition.statements[1], ContractStatement::Let { name, .. } if name == "have"));
        assert!(
            matches!(&definition.statements[5], ContractStatement::Emit { event, args } if event == "transferred" && args.len() == 3)
        );
        assert_eq!(definition.binding_names(), ["to_addr", "amount", "have"]);
    }

    #[test]
    fn binds_parameters_but_not_columns() {
        let mut statement = crate::sql::parse_statement(
            "UPDATE tokens SET balance = balance - amount WHERE owner = CALLER() AND tokens.amount > amount",
        )
        .expect("parses");
        bind_names(&mut statement, &["to_addr".into(), "amount".into()]);
        assert_eq!(
            statement.to_string(),
            "UPDATE tokens SET balance = balance - $2 WHERE owner = CALLER() AND tokens.amount > $2"
        );
    }

    #[test]
    fn modifiers_returns_and_drop() {
        let ChainStatement::CreateContract(view) = parse_chain_statement(
            "CREATE CONTRACT total() RETURNS TABLE (n BIGINT) OWNER VIEW AS $$ SELECT count(*) FROM t $$",
        )
        .expect("parses") else {
            panic!("not a contract");
        };
        assert_eq!(view.access, Access::Owner);
        assert!(view.view);
        assert_eq!(view.returns.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            parse_chain_statement("DROP CONTRACT IF EXISTS total").expect("parses"),
            ChainStatement::DropContract {
                name: "total".into(),
                if_exists: true
            }
        );
    }

    #[test]
    fn staking_statements() {
        assert_eq!(
            parse_chain_statement("STAKE 100").expect("parses"),
            ChainStatement::Stake(100)
        );
        assert_eq!(
            parse_chain_statement("unstake 7 ;").expect("parses"),
            ChainStatement::Unstake(7)
        );
        assert_eq!(
            parse_chain_statement("STAKE 5").expect("parses").kind(),
            StatementKind::Stake
        );
        for bad in [
            "STAKE",
            "STAKE 0",
            "STAKE -5",
            "STAKE 1.5",
            "STAKE 'a'",
            "STAKE 99999999999999999999",
            "UNSTAKE 5 6",
        ] {
            let error = parse_chain_statement(bad).expect_err(bad).to_string();
            assert!(error.contains("STAKE"), "{bad}: {error}");
        }
    }

    #[test]
    fn refuses_bad_bodies() {
        for (sql, expected) in [
            ("CREATE CONTRACT c() AS $$ SELECT 1 $$", "needs RETURNS TABLE"),
            (
                "CREATE CONTRACT c() RETURNS TABLE (a INT) AS $$ SELECT 1; DELETE FROM t $$",
                "only be the last",
            ),
            (
                "CREATE CONTRACT c() VIEW AS $$ DELETE FROM t $$",
                "VIEW contract cannot DELETE",
            ),
            (
                "CREATE CONTRACT c() AS $$ REQUIRE random() > 0, 'x' $$",
                "not deterministic",
            ),
            (
                "CREATE CONTRACT c() AS $$ INSERT INTO t VALUES (uuid()) $$",
                "not deterministic",
            ),
            ("CREATE CONTRACT c() AS $$ REQUIRE 1 > 0 $$", "Expected: ,"),
            (
                "CREATE CONTRACT c() AS $$ CREATE TABLE x (a INT) $$",
                "a contract body holds",
            ),
            ("CREATE CONTRACT c() AS $$ CALL c() $$", "cannot call itself"),
            (
                "CREATE CONTRACT c(a INT, a TEXT) AS $$ DELETE FROM t $$",
                "declared more than once",
            ),
            ("CREATE CONTRACT c() AS $$ $$", "empty body"),
            (
                "CREATE CONTRACT c() PUBLIC OWNER AS $$ DELETE FROM t $$",
                "exclude each other",
            ),
        ] {
            let error = parse_chain_statement(sql).expect_err(sql).to_string();
            assert!(error.contains(expected), "{sql}: {error}");
        }
    }
}
