-- get-masked: support reads one random existing customer through the masking view (name and
-- notes plain, email/phone/address masked, date_of_birth/ssn/card withheld), plus one audit
-- row, in one synced transaction. pgbench variables key and records (-D).
-- set_config('role', ...) is SET ROLE; combined with the key in one round trip, because the
-- view reads the key from the session setting app.key.
\set n random(1, :records)
SELECT set_config('role', 'vault_support', false), set_config('app.key', :key, false);
WITH r AS (
  SELECT * FROM customers_support WHERE n = :n
),
a AS (
  INSERT INTO audit (subject, action, record_id, fields)
  SELECT 'bench-support', 'read', r.id, 'name,email(masked),phone(masked),address(masked),notes'
  FROM r
)
SELECT * FROM r;
