-- put: the writer stores one customer, all 8 fields encrypted, plus one audit row, in one
-- synced transaction. pgbench variable key (-D). The uuid is drawn once (the CTE is
-- materialized) so the audit row names the record without RETURNING (which would need a
-- SELECT policy the writer does not have).
\set n random(1, 1000000000)
SET ROLE vault_writer;
WITH v AS (SELECT gen_random_uuid() AS id),
c AS (
  INSERT INTO customers (id, name, email, phone, address, date_of_birth, ssn, card_number, notes)
  SELECT v.id,
    pgp_sym_encrypt('Ada ' || translate((:n)::text, '0123456789', 'abcdefghij') || ' Lovelace', :key, 'cipher-algo=aes256, s2k-mode=1'),
    pgp_sym_encrypt('ada.' || (:n)::text || '@example.com', :key, 'cipher-algo=aes256, s2k-mode=1'),
    pgp_sym_encrypt('+4420794' || lpad(((:n)::int % 100000)::text, 5, '0'), :key, 'cipher-algo=aes256, s2k-mode=1'),
    pgp_sym_encrypt((:n)::text || ' St James''s Square, London', :key, 'cipher-algo=aes256, s2k-mode=1'),
    pgp_sym_encrypt('1815-12-10', :key, 'cipher-algo=aes256, s2k-mode=1'),
    pgp_sym_encrypt('123-45-6789', :key, 'cipher-algo=aes256, s2k-mode=1'),
    pgp_sym_encrypt('4242424242424242', :key, 'cipher-algo=aes256, s2k-mode=1'),
    pgp_sym_encrypt('customer ' || (:n)::text || ': prefers email', :key, 'cipher-algo=aes256, s2k-mode=1')
  FROM v
)
INSERT INTO audit (subject, action, record_id, fields)
SELECT 'bench-writer', 'write', v.id, 'name,email,phone,address,date_of_birth,ssn,card_number,notes'
FROM v;
