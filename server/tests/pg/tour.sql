-- A psql session against a ChainQL node: run with psql -X -v ON_ERROR_STOP=1 -f.
CREATE TABLE tokens (owner TEXT PRIMARY KEY, balance BIGINT NOT NULL);
INSERT INTO tokens VALUES ('alice', 100), ('bob', 5);
SELECT owner, balance FROM tokens ORDER BY owner;
UPDATE tokens SET balance = balance + 1 WHERE owner = 'bob';
BEGIN;
UPDATE tokens SET balance = balance - 10 WHERE owner = 'alice';
UPDATE tokens SET balance = balance + 10 WHERE owner = 'bob';
COMMIT;
SELECT owner, balance FROM tokens ORDER BY owner;
CREATE CONTRACT give(to_owner TEXT, amount BIGINT) AS $$
  REQUIRE amount > 0, 'amount must be positive';
  UPDATE tokens SET balance = balance + amount WHERE owner = to_owner;
$$;
CALL give('bob', 7);
SELECT balance FROM tokens WHERE owner = 'bob';
\x
SELECT owner, balance, balance > 20 AS rich FROM tokens WHERE owner = 'alice';
\x
SHOW server_version;
\dt
\d tokens
DELETE FROM tokens WHERE owner = 'bob';
SELECT count(*) AS holders FROM tokens;
