-- strongroom vs PostgreSQL: the schema. Run by benches/postgres.sh as the cluster superuser,
-- in the database `bench`, with psql variables :records (rows to preload) and :key (the
-- symmetric key; passed in, never stored in the database).
--
-- The vault's model, in PostgreSQL terms: every field encrypted (pgcrypto, AES-256, salted
-- S2K), roles enforced by row-level security and column grants, a masking view for support,
-- and one audit row per call.

CREATE EXTENSION pgcrypto;

-- Roles: NOLOGIN, granted to the login role `bench` the workloads connect as. `bench` is
-- NOINHERIT and owns nothing: it can do nothing until a session runs SET ROLE.
CREATE ROLE vault_admin NOLOGIN;
CREATE ROLE vault_support NOLOGIN;
CREATE ROLE vault_writer NOLOGIN;
CREATE ROLE bench LOGIN NOINHERIT;
GRANT vault_admin, vault_support, vault_writer TO bench;

CREATE TABLE customers (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  n serial UNIQUE, -- bench helper only: lets pgbench pick a random existing row by integer
  name bytea,
  email bytea,
  phone bytea,
  address bytea,
  date_of_birth bytea,
  ssn bytea,
  card_number bytea,
  notes bytea,
  created_at timestamptz DEFAULT now()
);

CREATE TABLE audit (
  id bigserial PRIMARY KEY,
  at timestamptz DEFAULT now(),
  subject text,
  action text,
  record_id uuid,
  fields text
);

-- Row security, forced so it applies even to the owner.
ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE customers FORCE ROW LEVEL SECURITY;
CREATE POLICY admin_all ON customers FOR ALL TO vault_admin USING (true) WITH CHECK (true);
CREATE POLICY support_read ON customers FOR SELECT TO vault_support USING (true);
CREATE POLICY writer_insert ON customers FOR INSERT TO vault_writer WITH CHECK (true);

-- Column grants: support cannot even select date_of_birth, ssn or card_number (withheld, as in
-- the vault's policy, where support has no rule for them).
GRANT SELECT, INSERT, UPDATE, DELETE ON customers TO vault_admin;
GRANT SELECT (id, n, name, email, phone, address, notes) ON customers TO vault_support;
GRANT INSERT ON customers TO vault_writer;
GRANT USAGE ON SEQUENCE customers_n_seq TO vault_admin, vault_writer;
GRANT INSERT ON audit TO vault_admin, vault_support, vault_writer;
GRANT USAGE ON SEQUENCE audit_id_seq TO vault_admin, vault_support, vault_writer;

-- What support sees, masked the way the vault masks (src/domain/field.rs): name and notes in
-- plaintext, email `a***@example.com`, phone `+*******1234`, address `***, <last part>`;
-- date_of_birth, ssn and card_number withheld. security_invoker: the caller's RLS policies and
-- column grants apply, not the view owner's. The key comes from the `app.key` setting of the
-- session. The LATERAL subquery (OFFSET 0 keeps it from being flattened) decrypts each field
-- once per row, however many times the masking expression uses it.
CREATE VIEW customers_support WITH (security_invoker = true) AS
SELECT
  c.id,
  c.n,
  d.name,
  CASE WHEN strpos(d.email, '@') > 0
       THEN left(d.email, 1) || '***@' || substr(d.email, strpos(d.email, '@') + 1)
       ELSE '***' END AS email,
  '+' || repeat('*', greatest(length(ltrim(d.phone, '+')) - 4, 0)) || right(ltrim(d.phone, '+'), 4)
    AS phone,
  CASE WHEN strpos(d.address, ',') > 0
       THEN '***, ' || btrim(regexp_replace(d.address, '^.*,', ''))
       ELSE '***' END AS address,
  d.notes
FROM customers c
CROSS JOIN LATERAL (
  SELECT pgp_sym_decrypt(c.name, current_setting('app.key')) AS name,
         pgp_sym_decrypt(c.email, current_setting('app.key')) AS email,
         pgp_sym_decrypt(c.phone, current_setting('app.key')) AS phone,
         pgp_sym_decrypt(c.address, current_setting('app.key')) AS address,
         pgp_sym_decrypt(c.notes, current_setting('app.key')) AS notes
  OFFSET 0
) d;
GRANT SELECT ON customers_support TO vault_support;

-- Preload: the same records the vault's bench writes (src/bench.rs, customer(n)), all fields
-- encrypted with AES-256 and a salted, single-pass S2K (s2k-mode=1; pgcrypto's default,
-- iterated S2K, would spend most of the time hashing the password).
INSERT INTO customers (name, email, phone, address, date_of_birth, ssn, card_number, notes)
SELECT
  pgp_sym_encrypt('Ada ' || translate(i::text, '0123456789', 'abcdefghij') || ' Lovelace', :'key', 'cipher-algo=aes256, s2k-mode=1'),
  pgp_sym_encrypt('ada.' || i || '@example.com', :'key', 'cipher-algo=aes256, s2k-mode=1'),
  pgp_sym_encrypt('+4420794' || lpad((i % 100000)::text, 5, '0'), :'key', 'cipher-algo=aes256, s2k-mode=1'),
  pgp_sym_encrypt(i || ' St James''s Square, London', :'key', 'cipher-algo=aes256, s2k-mode=1'),
  pgp_sym_encrypt('1815-12-10', :'key', 'cipher-algo=aes256, s2k-mode=1'),
  pgp_sym_encrypt('123-45-6789', :'key', 'cipher-algo=aes256, s2k-mode=1'),
  pgp_sym_encrypt('4242424242424242', :'key', 'cipher-algo=aes256, s2k-mode=1'),
  pgp_sym_encrypt('customer ' || i || ': prefers email', :'key', 'cipher-algo=aes256, s2k-mode=1')
FROM generate_series(1, :records) AS g(i)
ORDER BY i;

VACUUM ANALYZE customers;
VACUUM ANALYZE audit;
CHECKPOINT;
