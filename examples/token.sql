-- A fungible token with transfers and allowances, as ChainQL contracts.
--
--   chainql shell -f examples/token.sql
--
-- The account that runs this script owns the tables and the contracts, and holds the whole
-- supply. Everyone else changes the tables only through the contracts, which run with the
-- owner's rights and check every rule with REQUIRE.

CREATE TABLE balances (
  holder  TEXT PRIMARY KEY,
  balance BIGINT NOT NULL
);

CREATE TABLE allowances (
  holder    TEXT NOT NULL,
  spender   TEXT NOT NULL,
  allowance BIGINT NOT NULL,
  PRIMARY KEY (holder, spender)
);

INSERT INTO balances VALUES (CALLER(), 1000000);

-- Moves value from the caller to to_addr.
CREATE CONTRACT transfer(to_addr TEXT, value BIGINT) AS $$
  REQUIRE value > 0, 'value must be positive';
  REQUIRE (SELECT balance FROM balances WHERE holder = CALLER()) >= value, 'insufficient balance';
  UPDATE balances SET balance = balance - value WHERE holder = CALLER();
  INSERT INTO balances VALUES (to_addr, value)
    ON CONFLICT (holder) DO UPDATE SET balance = balances.balance + excluded.balance;
  EMIT transfer(CALLER(), to_addr, value);
$$;

-- Lets spender move up to value of the caller's tokens.
CREATE CONTRACT approve(spender TEXT, value BIGINT) AS $$
  REQUIRE value >= 0, 'value must not be negative';
  INSERT INTO allowances VALUES (CALLER(), spender, value)
    ON CONFLICT (holder, spender) DO UPDATE SET allowance = excluded.allowance;
  EMIT approval(CALLER(), spender, value);
$$;

-- Moves value from from_addr to to_addr, spending the caller's allowance.
CREATE CONTRACT transfer_from(from_addr TEXT, to_addr TEXT, value BIGINT) AS $$
  REQUIRE value > 0, 'value must be positive';
  LET allowed = (SELECT allowance FROM allowances WHERE holder = from_addr AND spender = CALLER());
  REQUIRE allowed >= value, 'allowance exceeded';
  REQUIRE (SELECT balance FROM balances WHERE holder = from_addr) >= value, 'insufficient balance';
  UPDATE allowances SET allowance = allowed - value WHERE holder = from_addr AND spender = CALLER();
  UPDATE balances SET balance = balance - value WHERE holder = from_addr;
  INSERT INTO balances VALUES (to_addr, value)
    ON CONFLICT (holder) DO UPDATE SET balance = balances.balance + excluded.balance;
  EMIT transfer(from_addr, to_addr, value);
$$;

-- Read-only: answered as queries, with no transaction.
CREATE CONTRACT balance_of(who TEXT) RETURNS TABLE (balance BIGINT) VIEW AS $$
  SELECT coalesce((SELECT balance FROM balances WHERE holder = who), 0)
$$;

CREATE CONTRACT allowance_of(holder_addr TEXT, spender_addr TEXT) RETURNS TABLE (allowance BIGINT) VIEW AS $$
  SELECT coalesce((SELECT allowance FROM allowances WHERE holder = holder_addr AND spender = spender_addr), 0)
$$;

-- A short tour.
CALL transfer('0xd01d143fa5470ab151abbbce8739b22b034cf155', 250);
CALL approve('0xd01d143fa5470ab151abbbce8739b22b034cf155', 100);
CALL balance_of('0xd01d143fa5470ab151abbbce8739b22b034cf155');
SELECT holder, spender, allowance FROM allowances;
SELECT holder, balance FROM balances ORDER BY balance DESC;
SELECT block_height, contract, event, args FROM chain.events ORDER BY block_height, event_index;
\dC
